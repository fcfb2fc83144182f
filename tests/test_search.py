"""Similarity search, anomaly ranking and the viewer: real exports, real faiss indexes, a real browser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from astropt import cli
from astropt.export import FORMAT, MANIFEST, read_embeddings
from astropt.model import GPT, GPTConfig
from astropt.search import SearchError, anomaly_scores, build_index, open_index, search
from astropt.search.anomalies import anomalies_path, precision_at, wilson_interval
from astropt.search.index import iter_vectors
from astropt.search.view import (
    chromium_driver,
    screenshot,
    serve_in_thread,
    system_chromium,
    write_view,
)

ROOT = Path(__file__).resolve().parents[1]
N, DIM, CLASSES, ODD = 400, 24, 4, 12


def _vectors_column(x: np.ndarray, value_type=None) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(x).reshape(-1), type=value_type or pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(x.shape[1:])))


def planted(seed: int = 0):
    """Clustered embeddings (class = cluster) with ODD far-off rows flagged ``is_artefact``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N)
    centres = rng.normal(size=(CLASSES, DIM)) * 4
    x = (centres[labels] + rng.normal(size=(N, DIM))).astype(np.float32)
    odd = rng.choice(N, ODD, replace=False)
    x[odd] = rng.normal(size=(ODD, DIM)).astype(np.float32) * 6
    truth = np.zeros(N, dtype=bool)
    truth[odd] = True
    ids = (5_000_000 + np.arange(N) * 3).astype(np.int64)
    thumbs = rng.integers(0, 255, (N, 8, 8, 3), dtype=np.uint8)
    return ids, x, labels, truth, thumbs


def write_plain(path: Path, ids, x, labels=None, truth=None, thumbs=None) -> Path:
    columns = {"id": pa.array(ids)}
    if labels is not None:
        columns["galaxy10"] = pa.array(labels.astype(np.int64))
    if truth is not None:
        columns["is_artefact"] = pa.array(truth)
    columns["embedding"] = _vectors_column(x)
    if thumbs is not None:
        columns["thumbnail"] = _vectors_column(thumbs, pa.uint8())
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture()
def export(tmp_path):
    ids, x, labels, truth, thumbs = planted()
    return write_plain(tmp_path / "emb.parquet", ids, x, labels, truth, thumbs)


def _cosine_neighbours(x: np.ndarray, row: int, k: int) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit[row]
    similarity[row] = -np.inf
    return np.argsort(-similarity, kind="stable")[:k]


def _cli(argv, capsys) -> tuple[int, str, str]:
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ------------------------------------------------------------------ index and search
def test_exact_search_is_the_cosine_ranking_and_writes_beside_the_export(export):
    ids, x, labels, *_ = planted()
    path = build_index(export)
    assert path == export.with_name("emb.index") and (path / "identity.json").is_file()
    record = json.loads((path / "identity.json").read_text())
    assert record["index"]["kind"] == "exact" and record["export"]["rows"] == N
    table = search(export, id=int(ids[7]), k=10, columns=["galaxy10"])
    expected = _cosine_neighbours(x, 7, 10)
    np.testing.assert_array_equal(table["id"], ids[expected])
    assert list(table["rank"]) == list(range(1, 11)) and (table["query"] == ids[7]).all()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(table["distance"], 1 - unit[expected] @ unit[7], atol=1e-5)
    np.testing.assert_array_equal(table["galaxy10"], labels[expected])
    # The id as text (the command line) finds the same galaxy.
    assert list(search(export, id=str(ids[7]), k=10)["id"]) == list(table["id"])


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_exact_search(export, kind):
    ids, x, *_ = planted()
    build_index(export, kind=kind, nlist=8, nprobe=8)
    assert open_index(export).kind == kind
    recall = []
    for row in range(0, N, 40):
        found = search(export, id=int(ids[row]), k=10)["id"].to_numpy()
        recall.append(len(set(found) & set(ids[_cosine_neighbours(x, row, 10)])) / 10)
    assert np.mean(recall) >= 0.9


def test_query_by_vectors_finds_the_row_itself(export):
    ids, x, *_ = planted()
    build_index(export, standardise=True)
    table = search(export, vectors=x[[3, 9]], k=2)
    assert list(table.loc[table["rank"] == 1, "id"]) == [ids[3], ids[9]]
    assert table.loc[table["rank"] == 1, "distance"].abs().max() < 1e-5


def test_sharded_export_is_indexed_in_the_split_order(tmp_path):
    """A torchrun export's shards (rows r, r+W, ...) index as the merged rows of read_embeddings."""
    ids, x, labels, *_ = planted()
    out = tmp_path / "sharded.parquet"
    shards = ["rank-00000-of-00002", "rank-00001-of-00002"]
    for rank, shard in enumerate(shards):
        rows = np.arange(rank, N, 2)
        (out / shard).mkdir(parents=True)
        parts = []
        for p, chunk in enumerate(np.array_split(rows, 3)):
            table = pa.table({
                "id": pa.array(ids[chunk]), "_position": pa.array(chunk.astype(np.int64)),
                "galaxy10": pa.array(labels[chunk]), "embedding": _vectors_column(x[chunk]),
            })  # fmt: skip
            pq.write_table(table, out / shard / f"part-{p:05d}.parquet")
            parts.append({"file": f"part-{p:05d}.parquet", "rows": len(chunk), "batches": 1})
        manifest = {"format": FORMAT, "settings": {"rank": rank}, "parts": parts, "complete": True}
        (out / shard / MANIFEST).write_text(json.dumps(manifest))
    top = {"format": FORMAT, "settings": {"model": "m"}, "shards": shards, "complete": True}
    (out / MANIFEST).write_text(json.dumps(top))
    merged_ids, merged, _ = read_embeddings(out)
    np.testing.assert_array_equal(merged_ids, ids)
    build_index(out)
    opened = open_index(out)
    np.testing.assert_array_equal(opened.ids, ids)
    np.testing.assert_allclose(opened.vectors([5, 6]), merged[[5, 6]] / np.linalg.norm(
        merged[[5, 6]], axis=1, keepdims=True), atol=1e-6)  # fmt: skip
    table = search(out, id=int(ids[11]), k=5)
    np.testing.assert_array_equal(table["id"], ids[_cosine_neighbours(x, 11, 5)])


def test_batches_hold_one_slice_at_a_time(export):
    sizes = [len(p) for p, _ in iter_vectors(export, batch_rows=64)]
    assert max(sizes) == 64 and sum(sizes) == N


# ------------------------------------------------------------------ bad input: one line, exit 2
def test_unknown_id_is_one_line(export, capsys):
    assert _cli(["index", str(export), "--no-progress"], capsys)[0] == 0
    status, out, err = _cli(["search", str(export), "--id", "42"], capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "id '42' is not in" in err and "5000000" in err


def test_stale_index_is_refused_naming_what_changed(export, capsys):
    ids, x, labels, truth, _ = planted()
    build_index(export)
    write_plain(export, ids[::-1].copy(), x, labels, truth)  # same rows, other order
    status, _, err = _cli(["search", str(export), "--id", str(ids[0])], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "stale index" in err and "ids differ" in err and "astropt index" in err
    with pytest.raises(SearchError, match="rows 400 -> 399"):
        write_plain(export, ids[:-1], x[:-1])
        open_index(export)


def test_empty_export_is_one_line(tmp_path, capsys):
    empty = write_plain(
        tmp_path / "empty.parquet", np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    )
    status, _, err = _cli(["index", str(empty)], capsys)
    assert status == 2 and err.count("\n") == 1 and "empty export" in err
    status, _, err = _cli(["search", str(tmp_path / "missing.parquet"), "--id", "1"], capsys)
    assert status == 2 and "does not exist" in err


def test_search_without_an_index_says_how_to_build_it(export, capsys):
    status, _, err = _cli(["search", str(export), "--id", "5000000"], capsys)
    assert status == 2 and "astropt index" in err
    status, out, _ = _cli(["search", str(export), "--id", "5000000", "--build", "--k", "3"], capsys)
    assert status == 0 and len(out.strip().splitlines()) == 4  # header + 3 neighbours


# ------------------------------------------------------------------ a real model: query by image
@pytest.fixture(scope="module")
def model_export(tiny_survey, tmp_path_factory):
    """A tiny model saved as a model folder, and its export of the survey's test split."""
    root = tmp_path_factory.mktemp("model_export")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, patch_size=8)).eval()
    model.save_pretrained(root / "model")
    out = root / "emb.parquet"
    argv = ["embed", f"checkpoint={root / 'model'}", f"data.path={tiny_survey.path}",
            f"out={out}", "split=test", "device=cpu", "dtype=float32", "progress=false"]  # fmt: skip
    assert cli.main(argv) == 0
    return root, out


def _stored_jpeg(survey_path: str, row: int, dest: Path) -> Path:
    table = pq.read_table(Path(survey_path) / "test" / "shard-00000.parquet")
    dest.write_bytes(table.column("image")[row].as_py()["bytes"])
    return dest


def test_query_by_image_embeds_it_with_the_exports_model(model_export, tiny_survey, tmp_path):
    root, out = model_export
    build_index(out)
    image = _stored_jpeg(tiny_survey.path, 5, tmp_path / "galaxy.jpg")
    table = search(out, image=image, k=3)
    assert table["id"].iloc[0] == tiny_survey.ids["test"][5]
    assert table["distance"].iloc[0] < 1e-5


def test_mismatched_model_is_one_line(model_export, tiny_survey, tmp_path, capsys):
    root, out = model_export
    build_index(out)
    other = tmp_path / "other"
    torch.manual_seed(1)
    GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, patch_size=8)).save_pretrained(
        other
    )
    image = _stored_jpeg(tiny_survey.path, 0, tmp_path / "galaxy.jpg")
    argv = ["search", str(out), "--image", str(image), "--checkpoint", str(other)]
    status, _, err = _cli(argv, capsys)
    assert status == 2 and err.count("\n") == 1 and "mismatched model" in err


# ------------------------------------------------------------------ anomalies
def test_planted_oddities_rank_first_and_are_written_as_columns(export, capsys):
    ids, x, labels, truth, _ = planted()
    status, out, err = _cli(["anomalies", str(export), "--top", "12"], capsys)
    assert status == 0
    scores = pd.read_parquet(anomalies_path(export))
    np.testing.assert_array_equal(scores["id"], ids)
    for name in ("anomaly", "anomaly_knn", "anomaly_iforest"):
        assert precision_at(scores[name], truth, ODD)["precision"] >= 0.9, name
    assert "precision at 12 for is_artefact" in err and "base rate 0.030" in err
    listed = [int(line.split()[0]) for line in out.strip().splitlines()[1:]]
    assert len(listed) == 12 and set(listed) <= set(ids[truth]) | set(ids)
    assert len(set(listed) & set(ids[truth])) >= 11


def test_precision_and_its_interval():
    result = precision_at(np.arange(10.0), np.arange(10) >= 6, top=5)
    assert result["hits"] == 4 and result["precision"] == 0.8 and result["base_rate"] == 0.4
    low, high = wilson_interval(4, 5)
    assert low < 0.8 < high and 0.2 < low < 0.4 and 0.95 < high < 1.0


# ------------------------------------------------------------------ the page
def test_view_data_holds_the_index_neighbours(export):
    ids, *_ = planted()
    site = write_view(export, projection="pca", k=6, top=10)
    text = (site / "data.js").read_text()
    data = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert len(data["x"]) == N and data["colour"] == "galaxy10"
    row = 17
    expected = search(export, id=int(ids[row]), k=6)["id"].astype(str).tolist()
    assert [data["ids"][g] for g in data["neighbours"][row]] == expected
    assert {"galaxy10", "is_artefact", "anomaly"} <= set(data["columns"])
    assert (site / "thumbs-000.png").is_file() and len(data["anomalies"]) == 10


def _require_browser() -> None:
    if system_chromium() is None:
        pytest.skip(
            "no Chromium and chromedriver from the system packages "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )


@pytest.mark.slow
def test_page_in_a_real_browser_shows_the_neighbours_of_a_clicked_galaxy(export, tmp_path):
    _require_browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ids, *_ = planted()
    site = write_view(export, projection="pca", k=8, top=10)
    server, url = serve_in_thread(site)
    driver = chromium_driver(tmp_path / "profile")
    try:
        driver.get(url)
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
        # A galaxy with no other galaxy drawn within 10 pixels, clicked where it is drawn.
        positions = driver.execute_script(
            "return arguments[0].map(id => window.astroptView.screenPosition(id));",
            [str(i) for i in ids],
        )
        xy = np.array([[p["x"], p["y"]] for p in positions])
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(N) * 1e9
        row = int(np.argmax(gaps.min(axis=1) > 10))
        assert gaps[row].min() > 10
        canvas = driver.find_element(By.ID, "map")
        box = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON();", canvas)
        dx = xy[row, 0] - (box["x"] + box["width"] / 2)
        dy = xy[row, 1] - (box["y"] + box["height"] / 2)
        ActionChains(driver).move_to_element_with_offset(
            canvas, int(round(dx)), int(round(dy))
        ).click().perform()
        assert driver.find_element(By.ID, "selected-id").text == str(ids[row])
        shown = [
            e.get_attribute("data-id")
            for e in driver.find_elements(By.CSS_SELECTOR, "#neighbours .neighbour")
        ]
        expected = search(export, id=int(ids[row]), k=8)["id"].astype(str).tolist()
        assert shown == expected
        # The anomaly list selects its galaxy too.
        first = driver.find_element(By.CSS_SELECTOR, "#anomalies li")
        first.click()
        assert driver.find_element(By.ID, "selected-id").text == first.get_attribute("data-id")
    finally:
        driver.quit()
        server.shutdown()


@pytest.mark.slow
def test_view_command_serves_on_localhost(export):
    """``astropt view`` binds 127.0.0.1 and serves the page it wrote."""
    import urllib.request

    code = (
        "import sys; from astropt.cli import main; "
        f"sys.exit(main(['view', {str(export)!r}, '--projection', 'pca', '--port', '0']))"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if line.startswith("serving on "):
                url = line.split()[2]
                break
        assert url.startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(url + "index.html", timeout=10).read().decode()
        assert "astropt view" in page and "data.js" in page
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_anomaly_scores_reuse_an_open_index(export):
    opened = open_index(export, build=True)
    scores = anomaly_scores(export, index=opened, k=5)
    assert list(scores.columns) == ["id", "anomaly", "anomaly_knn", "anomaly_iforest"]
    assert scores["anomaly"].between(0, 1).all()


@pytest.mark.slow
def test_screenshot_is_a_png_of_the_page(export, tmp_path):
    _require_browser()
    from PIL import Image

    site = write_view(export, projection="pca", k=8, top=10)
    png = screenshot(site, tmp_path / "view.png", select=5000003)
    with Image.open(png) as image:
        grey = np.asarray(image.convert("L"))
        assert image.size[0] == 1180 and len(np.unique(grey)) > 50


@pytest.mark.slow
def test_notebook_runs_on_a_small_export(export, monkeypatch):
    import nbclient  # test extras: a missing one is an error, not a skip
    import nbformat

    notebook = nbformat.read(ROOT / "probe" / "search.ipynb", as_version=4)
    monkeypatch.setenv("ASTROPT_EMBEDDINGS", str(export))
    monkeypatch.setenv("ASTROPT_NOTEBOOK_PROJECTION", "pca")  # UMAP has its own tests
    monkeypatch.chdir(export.parent)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert f"{N} galaxies, exact index" in outputs
    assert "precision at 50 for is_artefact" in outputs
    assert (export.parent / "emb.view" / "index.html").is_file()


def test_neighbour_agreement_against_the_class_prior(export):
    from astropt.search.evaluate import neighbour_agreement

    _, _, labels, truth, _ = planted()
    result = neighbour_agreement(open_index(export, build=True), labels, k=5, n_boot=200)
    _, counts = np.unique(labels, return_counts=True)
    assert result["chance"] == pytest.approx(np.sum(counts * (counts - 1)) / (N * (N - 1)))
    # Clusters are far apart: only the planted odd rows have foreign neighbours.
    assert result["agreement"] > 0.9 and result["interval"][0] < result["agreement"]
    shuffled = np.random.default_rng(0).permutation(labels)
    random = neighbour_agreement(open_index(export), shuffled, k=5, n_boot=200)
    assert random["interval"][0] < random["chance"] < random["interval"][1]


def test_search_page_results_come_from_the_committed_file():
    from astropt.search.evaluate import BLOCK, results_block

    page = (ROOT / "docs" / "search.md").read_text()
    match = BLOCK.search(page)
    assert match, "docs/search.md lost its generated results block"
    result = json.loads((ROOT / match["file"]).read_text())
    assert match.group(0) == results_block(result, match["file"]), (
        "docs/search.md is out of date: rerun the evaluate command it gives with page="
    )


def test_view_takes_stamps_from_the_export_or_its_data_source(model_export, tiny_survey, tmp_path):
    """Thumbnails of the export when it has them (its own rows), else the survey's images."""
    from PIL import Image

    _, out = model_export  # exported without thumbnails
    site = write_view(out, tmp_path / "site", projection="pca", k=3, top=3)
    text = (site / "data.js").read_text()
    data = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert data["tile"] == 32 and data["ids"] == [str(i) for i in tiny_survey.ids["test"]]
    with Image.open(site / "thumbs-000.png") as sheet:
        first = np.asarray(sheet)[:32, :32]
    assert first.std() > 5  # a galaxy, not an empty tile

    ids, x, labels, truth, thumbs = planted()
    export = write_plain(tmp_path / "own.parquet", ids, x, labels, truth, thumbs)
    site = write_view(export, tmp_path / "own", projection="pca", k=3, top=3)
    with Image.open(site / "thumbs-000.png") as sheet:
        tiles = np.asarray(sheet)
    np.testing.assert_array_equal(tiles[:8, 8:16], thumbs[1])


def test_documented_commands_parse(capsys):
    """Every ``astropt`` line of docs/search.md's command blocks is a valid command line."""
    import re
    import shlex

    page = (ROOT / "docs" / "search.md").read_text()
    lines = [
        line.split(" #")[0].strip()
        for block in re.findall(r"```(?:bash|text)\n(.*?)```", page, flags=re.S)
        for line in block.splitlines()
        if line.startswith("astropt ")
    ]
    assert {line.split()[1] for line in lines} >= {"index", "search", "anomalies", "view"}
    for line in lines:
        assert cli.main([*shlex.split(line)[1:], "--print-config"]) == 0, line
        assert json.loads(capsys.readouterr().out)


def test_published_result_is_stamped_and_reproducible_from_its_command(export, tmp_path):
    from astropt.results import check_result
    from astropt.search.evaluate import main as evaluate_main

    out, page = tmp_path / "result.json", tmp_path / "page.md"
    page.write_text("before\n<!-- search-results: x -->\n<!-- /search-results -->\nafter\n")
    argv = [str(export), "label=galaxy10", "truth=is_artefact", f"out={out}", f"page={page}"]
    assert evaluate_main(argv) == 0
    data = json.loads(out.read_text())
    assert check_result(data) == []
    assert data["provenance"]["command"] == (
        f"python -m astropt.search.evaluate {export} truth=is_artefact out={out} page={page}"
    )
    assert data["neighbours"]["agreement"] > 0.9
    assert data["anomalies"]["scores"]["anomaly_knn"]["hits"] == ODD
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "| 0.9" in text
