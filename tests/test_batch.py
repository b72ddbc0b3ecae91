"""`ovis-u1 batch`: jobs from JSONL on a tiny saved pipeline, one or two processes, resumed runs, GenEval's layout."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ovis_u1_hf import batch as batch_module
from ovis_u1_hf.cli import main
from tiny_pipelines import tiny_edit_pipeline, tiny_text_to_image_pipeline


SIZE = ["--height", "32", "--width", "32", "--steps", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    tiny_text_to_image_pipeline().save_pretrained(path)
    return path


def write_jobs(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def pixels(path):
    return np.asarray(Image.open(path))


def manifest(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_jobs_run_with_the_options_as_defaults_and_a_bad_line_is_skipped(folder, tmp_path, capsys):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"prompt": "a red cat", "seed": 3},
        {"prompt": "a dog", "sed": 1},
        "",
        {"prompt": "a blue bird", "height": 48, "id": "bird"},
    )
    out = tmp_path / "out"
    status = main(["batch", "generate", str(jobs), "--output-dir", str(out), "--model", str(folder), *SIZE, "--seed", "5"])
    assert status == 1  # the bad line makes the run incomplete
    captured = capsys.readouterr()
    assert f"{jobs}:2: unknown key(s) sed (known: prompt, negative_prompt, seed, height" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "bird.png", "results.jsonl"]

    pipe = tiny_text_to_image_pipeline()
    for name, prompt, seed, height in (("00000.png", "a red cat", 3, 32), ("bird.png", "a blue bird", 5, 48)):
        expected = pipe(prompt, height=height, width=32, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
        assert np.array_equal(pixels(out / name), np.asarray(expected.images[0]))

    records = sorted(manifest(out), key=lambda r: r["line"])
    assert [(r["line"], r["status"], r["outputs"], r["seed"]) for r in records] == [
        (1, "ok", ["00000.png"], 3),
        (4, "ok", ["bird.png"], 5),
    ]
    assert records[1]["job"] == {
        "prompt": "a blue bird", "negative_prompt": None, "seed": 5, "height": 48, "width": 32, "steps": 2,
        "guidance": 5.0, "count": 1, "id": "bird",
    }
    assert {r["version"] for r in records} == {"0.1.0"} and {r["model"] for r in records} == {str(folder)}
    summary = captured.out.splitlines()
    assert summary[0].split() == ["done", "skipped", "failed", "invalid", "images", "seconds", "images/s"]
    assert summary[1].split()[:5] == ["2", "0", "0", "1", "2"]


def test_batching_draws_the_same_noise_per_job_as_one_by_one(folder, tmp_path):
    # Batched matmuls round differently from single ones, so a pixel may move by one level; the noise is the same
    # (one generator per job), so the images are the same up to that rounding.
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"prompt": "a red cat", "seed": 1},
        {"prompt": "a much longer prompt about a dog on a mat", "seed": 2, "count": 2},
        {"prompt": "x", "seed": 3},
    )
    common = ["batch", "generate", str(jobs), "--model", str(folder), *SIZE]
    assert main([*common, "--output-dir", str(tmp_path / "one"), "--batch-size", "1"]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "four"), "--batch-size", "4"]) == 0
    names = ["00000.png", "00001-0.png", "00001-1.png", "00002.png"]
    for name in names:
        one, four = pixels(tmp_path / "one" / name).astype(int), pixels(tmp_path / "four" / name).astype(int)
        assert np.abs(one - four).max() <= 1 and (one != four).mean() < 0.01
    # The two images of a job differ (one generator drawn twice), and job 1's first image is `ovis-u1 generate`'s.
    assert not np.array_equal(pixels(tmp_path / "one" / names[1]), pixels(tmp_path / "one" / names[2]))
    main(["generate", "a red cat", "--model", str(folder), *SIZE, "--seed", "1", "--output", str(tmp_path / "s.png")])
    assert np.array_equal(pixels(tmp_path / "s.png"), pixels(tmp_path / "one" / names[0]))


def test_jobs_are_grouped_by_shape_into_full_batches():
    def job(line, height, count=1):
        return batch_module.Job(line, {"count": count}, {}, shape=(height, 32, 2, 5.0))

    jobs = [job(1, 32), job(2, 48), job(3, 32, count=2), job(4, 48), job(5, 32), job(6, 32, count=5)]
    batches = batch_module.form_batches(jobs, batch_size=3)
    assert [[j.line for j in b] for b in batches] == [[1, 3], [5], [6], [2, 4]]


def test_an_interrupted_run_resumes_without_touching_finished_outputs(folder, tmp_path, monkeypatch, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", *({"prompt": f"object {i}", "seed": i} for i in range(4)))
    args = ["batch", "generate", str(jobs), "--output-dir", str(tmp_path / "out"), "--model", str(folder), *SIZE]
    record = batch_module.Runner.record
    recorded = []

    def record_then_stop(self, job, result, seconds):
        if len(recorded) == 2:
            raise KeyboardInterrupt
        recorded.append(job.line)
        return record(self, job, result, seconds)

    monkeypatch.setattr(batch_module.Runner, "record", record_then_stop)
    assert main(args) == 130
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "results.jsonl"]
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("00000.png", "00001.png")}
    with open(out / "results.jsonl", "a") as file:
        file.write('{"line": 3, "status": "o')  # a record cut short by a killed process
    monkeypatch.setattr(batch_module.Runner, "record", record)
    capsys.readouterr()

    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:5] == ["2", "2", "0", "0", "2"]
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    ok = [r["line"] for r in manifest_lines(out) if r.get("status") == "ok"]
    assert sorted(ok) == [1, 2, 3, 4]  # each job once; the cut line stays unreadable and is ignored
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    uninterrupted = tmp_path / "uninterrupted"
    assert main([*args[:4], str(uninterrupted), *args[5:]]) == 0
    for i in range(4):
        assert (out / f"0000{i}.png").read_bytes() == (uninterrupted / f"0000{i}.png").read_bytes()

    capsys.readouterr()
    assert main(args) == 0  # nothing left to do
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["0", "4", "0"]


def manifest_lines(folder):
    records = []
    for line in (folder / "results.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append({"unreadable": line})
    return records


def test_a_failing_job_is_recorded_and_the_others_run(folder, tmp_path, monkeypatch, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "fine"}, {"prompt": "breaks"}, {"prompt": "fine too"})
    args = ["batch", "generate", str(jobs), "--output-dir", str(tmp_path / "out"), "--model", str(folder), *SIZE]
    run_jobs = batch_module.Runner.run_jobs

    def failing(self, jobs):
        if any(job.params["prompt"] == "breaks" for job in jobs):
            raise RuntimeError("out of memory")
        return run_jobs(self, jobs)

    monkeypatch.setattr(batch_module.Runner, "run_jobs", failing)
    assert main([*args, "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert "line 2 failed: RuntimeError: out of memory" in err
    assert f"ovis-u1 batch: error: 1 job(s) failed: see {tmp_path / 'out' / 'results.jsonl'}" in err
    records = {r["line"]: r for r in manifest(tmp_path / "out")}
    assert records[2]["status"] == "failed" and records[2]["error"] == "RuntimeError: out of memory"
    assert records[1]["status"] == records[3]["status"] == "ok"

    monkeypatch.setattr(batch_module.Runner, "run_jobs", run_jobs)
    assert main([*args, "--batch-size", "3"]) == 0  # the rerun does the failed job only
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["1", "2", "0"]


def test_geneval_layout(folder, tmp_path):
    metadata = [
        {"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a cow"},
        {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
         "prompt": "a photo of two clocks"},
    ]
    jobs = write_jobs(tmp_path / "evaluation_metadata.jsonl", *metadata)
    out = tmp_path / "geneval"
    args = ["batch", "generate", str(jobs), "--output-dir", str(out), "--model", str(folder), *SIZE]
    assert main([*args, "--layout", "geneval", "--count", "2", "--batch-size", "4"]) == 0
    for index, line in enumerate(metadata):
        prompt_folder = out / f"{index:05d}"
        assert sorted(p.name for p in prompt_folder.iterdir()) == ["metadata.jsonl", "samples"]
        with open(prompt_folder / "metadata.jsonl") as file:
            assert json.load(file) == line  # as GenEval's evaluate_images.py reads it
        assert sorted(p.name for p in (prompt_folder / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert main([*args, "--layout", "flat"]) == 2  # GenEval's keys belong to its layout only


def test_edit_jobs_match_the_pipeline(folder, tmp_path):
    (tmp_path / "images").mkdir()
    source = tmp_path / "images" / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(source)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"prompt": "make it blue", "image": "images/in.png", "seed": 4},  # relative to the jobs file
        {"prompt": "make it red", "image": "images/missing.png"},
    )
    out = tmp_path / "out"
    assert main(["batch", "edit", str(jobs), "--output-dir", str(out), "--model", str(folder), "--steps", "2"]) == 1
    pipe = tiny_edit_pipeline()
    expected = pipe(Image.open(source), "make it blue", num_inference_steps=2, generator=torch.Generator().manual_seed(4))
    assert np.array_equal(pixels(out / "00000.png"), np.asarray(expected.images[0]))
    assert [r["line"] for r in manifest(out)] == [1]


def test_chat_jobs_write_the_greedy_answers_in_order(folder, tmp_path):
    from ovis_u1_hf import OvisU1ForConditionalGeneration, OvisU1Processor

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    questions = [
        {"prompt": "what is it?", "image": "image.png", "id": "q1"},
        {"prompt": "and in more words, what colour is the thing you see?", "image": ["image.png", "image.png"]},
        {"prompt": "hello", "max_new_tokens": 3},
    ]
    jobs = write_jobs(tmp_path / "questions.jsonl", *questions)
    out = tmp_path / "out"
    args = ["batch", "chat", str(jobs), "--output-dir", str(out), "--model", str(folder), "--max-new-tokens", "5"]
    assert main([*args, "--batch-size", "4"]) == 0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == ["q1", 1, 2]

    model = OvisU1ForConditionalGeneration.from_pretrained(folder / "text_encoder")
    processor = OvisU1Processor.from_pretrained(folder / "processor")
    for question, answer in zip(questions, answers):
        paths = question.get("image", [])
        images = [Image.open(tmp_path / p) for p in ([paths] if isinstance(paths, str) else paths)]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question["prompt"]}]
        messages = [{"role": "user", "content": content}]
        inputs = processor(
            images=images or None, text=processor.apply_chat_template(messages, add_generation_prompt=True),
            return_tensors="pt",
        )
        limit = question.get("max_new_tokens", 5)
        tokens = model.generate(**inputs, max_new_tokens=limit, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        assert answer["answer"] == processor.decode(tokens, skip_special_tokens=True)
        assert answer["prompt"] == question["prompt"] and 0 < answer["tokens"] <= limit


def run_cli(arguments, *launcher, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads per process in both runs: same float rounding
    command = [sys.executable, *launcher, "-m", "ovis_u1_hf.cli", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_two_processes_write_the_same_files_as_one(folder, tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        *({"prompt": f"thing number {i}" + " big" * i, "seed": i, "height": 32 + 16 * (i % 2)} for i in range(5)),
    )
    args = ["batch", "generate", str(jobs), "--model", str(folder), *SIZE, "--batch-size", "2"]
    single = run_cli([*args, "--output-dir", str(tmp_path / "one")], cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    double = run_cli([*args, "--output-dir", str(tmp_path / "two")], *launcher, cwd=tmp_path)
    assert double.returncode == 0, double.stderr
    assert "process 0" in double.stderr and "process 1" in double.stderr  # one progress bar each

    names = [f"{i:05d}.png" for i in range(5)]
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    records = manifest(tmp_path / "two")
    assert sorted(r["line"] for r in records) == [1, 2, 3, 4, 5]  # each job by one process, lines whole
