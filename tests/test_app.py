"""``unica app``: the search API against the harness, bad inputs, the CLI's checks, the Space export (served by its
own ``python app.py``), and the page end to end in Chromium (Playwright driving the system browser)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY_VIT, make_image

from dataset_builders.evaluation import build_evaluation_sets
from eval.index import IndexSpec
from unica.apps.app.search import SearchIndex, SearchSession, check_eval_folder, load_query_image
from unica.apps.app.ui import Thumbnails, render_hits, warn_if_exposed
from unica.apps.cli import main as cli
from unica.apps.evaluate import evaluate_checkpoint
from unica.checkpoint import init_model, save_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "scenes"
TASKS = ("task2", "task7")
REPO = Path(__file__).resolve().parents[1]


def _text_encoder(folder: Path, tokenizer_source: str) -> str:
    """A random 2-layer BERT (hidden 32) initialised with std 0.2: BERT's own 0.02 gives every text nearly the same
    embedding (rankings would be ties of 1e-7); 0.2 separates the scenes' top-10 scores by 1e-5 or more."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=96, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=0.2)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def app(tmp_path_factory, minilm_path):
    """Two small checkpoints (bica, concat; other vision weights), the scenes evaluation set, the harness's run of
    bica (its rankings and its embedding cache) and a session over both models reading that cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one query at a time: a second thread only waits on a machine shared with other work
    root = tmp_path_factory.mktemp("app")
    text = _text_encoder(root / "text", minilm_path)
    checkpoints = {}
    for fusion, seed in (("bica", 0), ("concat", 1)):
        torch.manual_seed(seed)
        model, processor = init_model(text, "vit-micro", fusion=fusion,
                                      vision_config_overrides={**TINY_VIT, "initializer_range": 0.2})
        checkpoints[fusion] = save_checkpoint(model, processor, root / fusion)
    eval_dir = root / "scenes-eval"
    build_evaluation_sets(FIXTURE, eval_dir, dataset="scenes", tasks=(2, 7))
    cache = root / "cache"
    harness = evaluate_checkpoint(checkpoints["bica"], eval_dir, cache_dir=cache, k_values=[1, 5, 10],
                                  show_progress=False)
    assert harness["settings"]["cache"] == {"hits": 0, "misses": 2}
    session = SearchSession([checkpoints["bica"], checkpoints["concat"]], eval_dir, cache_dir=cache,
                            show_progress=False)
    image = root / "query.png"
    make_image(3, size=64).save(image)
    yield SimpleNamespace(root=root, checkpoints=checkpoints, eval_dir=eval_dir, cache=cache, harness=harness,
                          session=session, image=image)
    torch.set_num_threads(threads)


def _parts(item):
    """(text, image) of a harness item."""
    if isinstance(item, dict):
        return item["text"], item["image"]
    return (item, None) if isinstance(item, str) else (None, item)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_search_api_ranks_as_the_harness_from_its_cache(app, caplog):
    session = app.session
    misses = session.cache.misses
    for task in TASKS:
        index = session.index(0, task)
        assert index.from_cache and len(index) == len(index.task.corpus_ids)
    assert session.cache.misses == misses  # bica's candidates: the harness's entries, nothing encoded

    compared = 0
    for task in TASKS:
        index = session.index(0, task)
        rankings = app.harness["rankings"][task]
        per_query = app.harness["per_query"][task]
        assert per_query["qids"] == index.task.query_ids
        for position, (qid, item) in enumerate(zip(index.task.query_ids, index.task.query_items)):
            text, image = _parts(item)
            hits = index.search(text=text, image=image, k=10)
            assert [hit.doc_id for hit in hits] == rankings[position][:10], (task, qid)
            assert [hit.rank for hit in hits] == list(range(1, 11))
            assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
            compared += 1
            if position % 4:
                continue
            # The set's own query (as the picker runs it): the same ranking, relevant hits marked, the harness's R@10.
            own = index.search_query(qid, k=10)
            assert [hit.doc_id for hit in own] == rankings[position][:10]
            relevant = set(index.task.relevant[position])
            assert [hit.relevant for hit in own] == [hit.doc_id in relevant for hit in own]
            scores = index.query_scores(qid, own)
            assert scores["hit@10"] == per_query["hit@10"][position]
            assert scores["recall@10"] == pytest.approx(per_query["recall@10"][position])
    assert compared == sum(len(session.index(0, task).task.query_ids) for task in TASKS) == 75 + 46

    # A hit carries its document: the corpus row's text and (undecoded) image.
    hit = session.index(0, "task2").search(text="a small red circle", k=1)[0]
    text, image = _parts(session.index(0, "task2").task.corpus_items[hit.position])
    assert hit.text == text and hit.has_image == (image is not None)
    assert session.index(0, "task2").document_image(hit.position).size == image.size

    # concat's candidates were encoded once and stored: a new index of that model reads them back.
    concat = session.index(1, "task7")
    assert not concat.from_cache
    again = SearchIndex.build(session.models[1], concat.task, cache=app.cache, show_progress=False)
    assert again.from_cache
    query = {"text": "Add a small purple circle on the right.", "image": app.image}
    assert [h.doc_id for h in again.search(**query, k=10)] == [h.doc_id for h in concat.search(**query, k=10)]

    # An approximate index is trained once and saved beside its cache entry; the next build loads it.
    spec = IndexSpec.parse("hnsw,hnsw_m=8")
    hnsw = SearchIndex.build(session.models[0], first_task := session.task("task2"), cache=app.cache, index_spec=spec,
                             show_progress=False)
    saved = list(app.cache.rglob("*.index-hnsw-*"))
    assert len(saved) == 1 and (saved[0] / "index.faiss").is_file()
    with caplog.at_level(logging.INFO, logger="unica.app"):
        reloaded = SearchIndex.build(session.models[0], first_task, cache=app.cache, index_spec=spec,
                                     show_progress=False)
    assert any("loaded the hnsw index" in record.getMessage() for record in caplog.records)
    assert reloaded.index.spec.kind == "hnsw" and len(reloaded) == len(hnsw) == 120
    assert [h.doc_id for h in reloaded.search(text="a red circle", k=5)] == [
        h.doc_id for h in hnsw.search(text="a red circle", k=5)]

    # The API's entry point: load the checkpoint, index a task (any spelling the harness takes) from the cache.
    loaded = SearchIndex.from_eval_folder(app.checkpoints["bica"], app.eval_dir, task="scenes_task7",
                                          cache_dir=app.cache, show_progress=False)
    assert loaded.from_cache and loaded.task.name == "task7"
    first = session.index(0, "task7")
    assert [h.doc_id for h in loaded.search(image=app.image, k=10)] == [
        h.doc_id for h in first.search(image=app.image, k=10)]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's header) and holds one row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_bad_queries_and_folders_are_one_line_errors(app, tmp_path):
    index = app.session.index(0, "task2")
    png = io.BytesIO()
    make_image(1, size=40).save(png, format="PNG")
    pcx = io.BytesIO()
    make_image(1, size=40).save(pcx, format="PCX")
    cases = [
        (lambda: index.search(), ValueError, "the query is empty"),
        (lambda: index.search(text="  \n "), ValueError, "the query is empty"),
        (lambda: index.search(text="x" * 5000), ValueError, "at most 4000"),
        (lambda: index.search(text="a circle", k=0), ValueError, "k=0"),
        (lambda: index.search(image=b"not an image at all"), ValueError, "not an image file"),
        (lambda: index.search(image=b""), ValueError, "empty"),
        (lambda: index.search(image=png.getvalue()[:120]), ValueError, "corrupt or truncated"),
        (lambda: index.search(image=pcx.getvalue()), ValueError, "unsupported image type PCX"),
        (lambda: index.search(image=_png_header(60_000, 60_000)), ValueError, "too many pixels"),
        (lambda: index.search(image=tmp_path / "missing.png"), FileNotFoundError, "does not exist"),
        (lambda: load_query_image(png.getvalue(), max_pixels=1000), ValueError, "40x40 = 1600 pixels, over the limit"),
        (lambda: index.search_query("no-such-query"), ValueError, "not a query of task2"),
        (lambda: check_eval_folder(tmp_path / "nowhere"), FileNotFoundError, "does not exist"),
        (lambda: check_eval_folder(app.checkpoints["bica"]), ValueError, "not an evaluation folder"),
        (lambda: check_eval_folder(app.eval_dir, "task9"), ValueError, "unknown task 'task9'"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind, match=re.escape(message)) as raised:
            call()
        assert "\n" not in str(raised.value), str(raised.value)
    # The limit is on pixels, not on the file: a 40x40 image passes 1600 pixels; a good query still answers.
    assert load_query_image(png.getvalue(), max_pixels=1600).size == (40, 40)
    assert len(index.search(text="a circle", image=png.getvalue(), k=3)) == 3

    # Document texts are shown escaped: no markup or template syntax from the corpus reaches the page.
    from unica.apps.app.search import Hit

    hostile = Hit(rank=1, doc_id='d"1<', score=0.5, position=0, text="<script>alert(1)</script> ${x} {{y}}",
                  relevant=True)
    page = render_hits([hostile], index, Thumbnails(), shared={'d"1<'})
    assert "<script>" not in page and "${" not in page and "{{" not in page
    assert 'data-doc-id="d&quot;1&lt;"' in page and 'data-relevant="true"' in page and 'data-shared="true"' in page


def test_cli_checks_inputs_before_loading_a_model(app, tmp_path, monkeypatch, caplog):
    import unica.checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(unica.checkpoint, "load_checkpoint", refuse)
    bica, existing = str(app.checkpoints["bica"]), tmp_path / "existing"
    existing.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases = [
            ([bica, "--corpus", bica], "is not an evaluation folder"),
            ([bica, "--corpus", str(tmp_path / "nowhere")], "does not exist"),
            ([str(tmp_path), "--corpus", str(app.eval_dir)], "no config.json"),
            ([bica, "--corpus", str(app.eval_dir), "--task", "task9"], "unknown task"),
            ([bica, "--corpus", str(app.eval_dir), "--k", "0"], "--k 0"),
            ([bica, "--corpus", str(app.eval_dir), "--max-file-size", "lots"], "--max-file-size"),
            ([bica, "--corpus", str(app.eval_dir), "--index", "bogus"], "index kind 'bogus'"),
            ([bica, "--corpus", str(app.eval_dir), "--export", str(existing)], "already exists"),
            ([bica, "--corpus", str(app.eval_dir), "--port", str(busy)], f"cannot serve on 127.0.0.1:{busy}"),
        ]
        for arguments, message in cases:
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="unica"):
                assert cli(["app", *arguments]) == 1, arguments
            errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
            assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], (arguments, errors)

    with caplog.at_level(logging.WARNING, logger="unica.app"):
        caplog.clear()
        warn_if_exposed("127.0.0.1", 7860)
        assert not caplog.records
        warn_if_exposed("0.0.0.0", 7860)
        assert "anyone who can reach this port can query the corpus" in caplog.records[0].getMessage()

    # Registering the command imports neither gradio nor torch (nor faiss, datasets, transformers).
    probe = ("import argparse, sys\nfrom unica.apps.app.cli import register\n"
             "register(argparse.ArgumentParser().add_subparsers())\n"
             "print(sorted(m for m in ('gradio', 'torch', 'faiss', 'datasets', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_export_writes_a_space_that_serves_with_python_app_py(app, tmp_path):
    gradio = pytest.importorskip("gradio")
    from gradio_client import Client

    out = tmp_path / "my-space"
    arguments = ["app", str(app.checkpoints["bica"]), "--corpus", str(app.eval_dir), "--compare",
                 str(app.checkpoints["concat"]), "--cache-dir", str(app.cache), "--export", str(out)]
    assert cli(arguments) == 0
    for name in ("app.py", "requirements.txt", "README.md", "space_config.json", ".gitattributes",
                 "models/bica/model.safetensors", "models/concat/config.json", "corpus/README.md",
                 "unica/apps/app/search.py", "unica/templates/space_app.py.tmpl", "eval/harness.py", "eval/index.py",
                 "dataset_builders/rows.py", "modeling_unica/processing_unica.py", "configuration_unica/__init__.py"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("__pycache__")) and not list(out.rglob("*.lock"))
    assert not [p for p in tmp_path.iterdir() if p.name != "my-space"]  # no staging folder left beside it
    # One cache entry per model and task: the Space encodes nothing at start.
    assert len(list((out / "embedding-cache").rglob("*.npy"))) == 2 * len(TASKS)
    readme = (out / "README.md").read_text()
    header = yaml.safe_load(readme.split("---\n")[1])
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    assert header["sdk_version"] == gradio.__version__ and header["title"] == "UniCA search"
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert f"gradio=={gradio.__version__}" in requirements
    assert {"faiss-cpu", "datasets", "transformers", "pillow"} <= {line.split("==")[0] for line in requirements}
    config = json.loads((out / "space_config.json").read_text())
    assert config["models"] == ["models/bica", "models/concat"] and config["task"] == "task2"

    assert cli(arguments) == 1  # an existing folder is refused...
    assert cli([*arguments, "--overwrite"]) == 0  # ...unless replaced

    # The Space runs from its own folder with `python app.py`, on the copied code, models, corpus and cache.
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path / "space.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        result = Client(url, verbose=False).predict("task2", None, "a small red circle", None, 5, api_name="/search")
        status, galleries = result[0], result[3:]
        assert status.startswith("Top 5 of 120 documents (task2)")
        for number, gallery in enumerate(galleries):
            expected = app.session.index(number, "task2").search(text="a small red circle", k=5)
            assert re.findall(r'data-doc-id="([^"]+)"', gallery) == [hit.doc_id for hit in expected]
        text = log.read_text()
        assert f"UniCA code from {out.resolve() / 'unica'}" in text
        assert text.count("(embeddings from the cache)") == 2 and "(encoded)" not in text
    finally:
        server.terminate()
        server.wait(timeout=30)


def _browser():
    """(sync_playwright, expect, chromium path), or a skip saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; the system chromium is used, no "
                    "`playwright install`)")
    return sync_playwright, expect, chromium


def test_page_in_chromium(app, tmp_path):
    sync_playwright, expect, chromium = _browser()
    pytest.importorskip("gradio")
    from unica.apps.app.ui import build_app, launch

    session = app.session
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not an image")
    text = "a small red circle on the left"
    bica, concat = session.index(0, "task2"), session.index(1, "task2")
    # A query of the evaluation set whose top 10 (bica) holds a relevant document.
    picked = next(q for q in bica.queries() if any(hit.relevant for hit in bica.search_query(q.qid, 10)))

    page = build_app(session)
    port = _free_port()
    launch(page, port=port, block=False, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                 args=["--no-sandbox", "--disable-background-networking"])
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.goto(f"http://127.0.0.1:{port}/")

            def status_contains(fragment: str) -> str:
                tab.wait_for_function("f => document.querySelector('#status').innerText.includes(f)", arg=fragment,
                                      timeout=30_000)
                return tab.locator("#status").inner_text()

            def gallery_ids(number: int) -> list[str]:
                return tab.locator(f"#gallery-{number} [data-doc-id]").evaluate_all(
                    "cards => cards.map(card => card.dataset.docId)")

            # A text and an image: each model's gallery shows what the search API returns for the same query.
            tab.locator("#query-text textarea").fill(text)
            tab.locator("#query-image-file input[type=file]").set_input_files(str(app.image))
            status_contains("Query image ready: 64x64 pixels")
            tab.locator("#search").click()
            status_contains("for your query")
            expected = [index.search(text=text, image=app.image, k=10) for index in (bica, concat)]
            assert gallery_ids(0) == [hit.doc_id for hit in expected[0]]
            assert gallery_ids(1) == [hit.doc_id for hit in expected[1]]
            shared = {hit.doc_id for hit in expected[0]} & {hit.doc_id for hit in expected[1]}
            marked = tab.locator("#gallery-0 [data-shared=true]").evaluate_all("cards => cards.map(c => c.dataset.docId)")
            assert set(marked) == shared
            assert f"{len(shared)} shared by both models" in tab.locator("#status").inner_text()

            # A corrupt upload: a message on the page, and the server keeps answering.
            tab.locator("#clear").click()  # empties the drop zone (a filled one shows the file, not an input)
            expect(tab.locator("#query-text textarea")).to_have_value("")
            tab.locator("#query-image-file input[type=file]").set_input_files(str(broken))
            assert "not an image file" in status_contains("not an image file")
            tab.locator("#query-text textarea").fill("a blue square")
            tab.locator("#search").click()
            status_contains("for your query")
            assert gallery_ids(0) == [hit.doc_id for hit in bica.search(text="a blue square", k=10)]

            # An empty query: a message, no results.
            tab.locator("#clear").click()
            expect(tab.locator("#query-text textarea")).to_have_value("")  # cleared before the next click
            tab.locator("#search").click()
            status_contains("the query is empty")
            assert gallery_ids(0) == []

            # A query of the evaluation set: its relevant documents marked, each model's R@10 shown.
            tab.locator("#query-picker input").click()
            tab.locator("#query-picker input").fill(picked.qid)
            tab.locator("[role=option]", has_text=f"{picked.qid} ·").first.click()
            status_contains(f"query {picked.qid} of the evaluation set")
            for number, index in enumerate((bica, concat)):
                hits = index.search_query(picked.qid, 10)
                assert gallery_ids(number) == [hit.doc_id for hit in hits]
                relevant = tab.locator(f"#gallery-{number} [data-relevant=true]").evaluate_all(
                    "cards => cards.map(c => c.dataset.docId)")
                assert relevant == [hit.doc_id for hit in hits if hit.relevant]
                scores = index.query_scores(picked.qid, hits)
                heading = tab.locator(f"#metrics-{number}").inner_text()
                assert f"R@10 = {scores['hit@10']:.0f}" in heading
                assert f"recall@10 = {scores['found']}/{scores['relevant']}" in heading
            assert tab.locator("#query-text textarea").input_value() == (picked.text or "")

            for close in tab.locator(".toast-close").all():  # the earlier warnings' toasts would cover the results
                close.click()
            tab.wait_for_function("!document.querySelector('.toast-body')", timeout=10_000)
            shot = tmp_path / "app.png"
            tab.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 20_000
        artifacts = Path(os.environ.get("UNICA_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, artifacts / "app.png")
    finally:
        page.close()
