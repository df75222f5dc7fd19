"""report.html and summary.html as a user sees them: opened in a real headless Chromium
through Playwright, with no console error, every chart drawn, a failed target's reason on
screen, and a screenshot kept in the test's tmp dir."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLES

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or \
    shutil.which("google-chrome")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """A passing CNN, a model two of whose targets fail, and a batch of both."""
    import tensorflow as tf

    import tfopt
    from tfopt.batch import run_batch

    root = tmp_path_factory.mktemp("html")

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.strings.length(text)}

    module = Strings()
    tf.saved_model.save(module, str(root / "strings"), signatures={"serving_default":
                                                                     module.serve})
    tfopt.freeze(SAMPLES / "keras_cnn", root / "cnn")
    tfopt.freeze(root / "strings", root / "failing")
    manifest = root / "models.jsonl"
    manifest.write_text(f'{{"src": "{SAMPLES / "keras_cnn"}", "name": "cnn"}}\n'
                        f'{{"src": "{root / "strings"}", "name": "strings"}}\n')
    run_batch([str(manifest)], root / "batch", workers=1, targets=["onnx", "pb"])
    return {"cnn": root / "cnn", "failing": root / "failing", "batch": root / "batch"}


def test_every_output_has_its_page(outputs):
    for name in ("cnn", "failing"):
        page = (outputs[name] / "report.html").read_text()
        # offline: nothing is fetched (xmlns URIs in the inline SVG are names, not fetches)
        assert "<script" not in page and "<link" not in page
        assert 'src="http' not in page and 'href="http' not in page
        assert page.count("<svg") >= 4
    # each banner says at which batch sizes the artifact was checked
    assert (outputs["cnn"] / "report.html").read_text().count(
        "matches the original at batch 1 and 3") == 4
    summary = (outputs["batch"] / "summary.html").read_text()
    assert 'href="cnn/report.html"' in summary and (outputs["batch"] / "cnn" /
                                                    "report.html").is_file()


def test_tfopt_report_regenerates_the_page(outputs, capsys):
    from tfopt.commands import main

    page = outputs["cnn"] / "report.html"
    page.unlink()
    assert main(["report", str(outputs["cnn"])]) == 0
    assert page.is_file() and str(page) in capsys.readouterr().out


def _browser():
    if BROWSER is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); the "
                    "browser test needs one")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    return playwright


def _open(page, path: Path) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return errors


@pytest.mark.parametrize("width", [1200, 390], ids=["laptop", "phone"])
def test_report_pages_render_in_a_real_browser(outputs, tmp_path, width):
    sync_api = _browser()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        for name in ("cnn", "failing"):
            errors = _open(page, outputs[name] / "report.html")
            charts = page.locator("figure.chart svg")
            assert charts.count() >= 4
            for i in range(charts.count()):
                box = charts.nth(i).bounding_box()
                assert box and box["width"] > 100 and box["height"] > 50
                assert charts.nth(i).locator("path, rect, use").count() > 5
            assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
            page.screenshot(path=str(tmp_path / f"{name}_{width}.png"), full_page=True)
            assert not errors, errors
        failed = page.locator("#target-onnx")
        assert failed.is_visible() and "StringLength" in failed.inner_text()
        assert "failed" in failed.get_attribute("class")

        errors = _open(page, outputs["batch"] / "summary.html")
        rows = page.locator("#rows tbody tr")
        assert rows.count() == 4  # 2 models x 2 targets
        first = rows.nth(0).locator("td").nth(0).inner_text()
        page.locator("th[data-key='0']").click()
        page.locator("th[data-key='0']").click()  # descending
        assert rows.nth(0).locator("td").nth(0).inner_text() != first
        page.locator("a[href='cnn/report.html']").first.click()
        page.wait_for_load_state("load")
        assert page.url.endswith("cnn/report.html") and page.locator("figure.chart").count()
        page.screenshot(path=str(tmp_path / f"summary_{width}.png"), full_page=True)
        browser.close()
    assert not errors, errors
    report = json.loads((outputs["failing"] / "report.json").read_text())
    assert report["exit_code"] == 3


def test_reports_match_the_shipped_json_schema(outputs, tmp_path):
    import jsonschema

    import tfopt

    schema_path = Path(tfopt.__file__).parent / "reporting" / "schemas" / "report.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    quantized = tfopt.freeze(SAMPLES / "keras_cnn", tmp_path / "q", targets=["tflite"],
                             quantize="int8", calibration="random")
    for out in (outputs["cnn"], outputs["failing"], outputs["batch"] / "cnn",
                Path(quantized.out_dir)):
        jsonschema.validate(json.loads((out / "report.json").read_text()), schema)
    # one verdict: an artifact that fails parity is "differs", never "ok", everywhere
    differs = tfopt.freeze(SAMPLES / "keras_cnn", tmp_path / "d", targets=["tflite"],
                           quantize="int8", calibration="random", min_cosine=0.99999999)
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    artifact = report["artifacts"][0]
    assert differs.exit_code == report["exit_code"] == 4
    assert artifact["status"] == "differs" and not artifact["parity"]["passed"]
    assert Path(artifact["path"]).is_file()
    jsonschema.validate(report, schema)
    artifact["status"] = "ok"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, schema)
    page = (tmp_path / "d" / "report.html").read_text()
    assert '<div class="banner parity" id="target-tflite"><b>tflite: parity</b>' in page
    stages = json.loads((outputs["cnn"] / "report.json").read_text())["resources"]["stages"]
    assert [s["stage"] for s in stages][-4:] == [f"{t}: export and verify" for t in
                                                 ("onnx", "tflite", "pb", "saved_model")]
    assert all(s["peak_rss_mb"] >= s["rss_start_mb"] > 0 for s in stages)
    assert json.loads((outputs["cnn"] / "report.json").read_text())["resources"][
        "large_blocks_mapped"] is False  # a small source keeps glibc's own threshold
    broken = json.loads((outputs["cnn"] / "report.json").read_text())
    del broken["artifacts"][0]["sha256"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
