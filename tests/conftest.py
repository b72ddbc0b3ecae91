import logging
import os
import sys

import pytest


sys.path.insert(0, os.path.dirname(__file__))


class _DeprecationNotices(logging.Handler):
    """Collects the deprecation notices that transformers and diffusers log (rather than warn) once per process."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.messages.append(f"{record.name}: {message}")


@pytest.fixture(autouse=True)
def no_deprecated_library_use():
    """Fails a test whose run made transformers or diffusers log a deprecation notice (warnings are in pyproject)."""
    handler = _DeprecationNotices()
    loggers = [logging.getLogger(name) for name in ("transformers", "diffusers")]
    for logger in loggers:
        logger.addHandler(handler)
    yield
    for logger in loggers:
        logger.removeHandler(handler)
    assert not handler.messages, "deprecated library API used:\n" + "\n".join(handler.messages)


@pytest.fixture
def keep_active_attention_backend(monkeypatch):
    """diffusers' `set_attention_backend` also makes its backend the process-wide default, which
    `reset_attention_backend` keeps: the test's choice is undone after it."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
