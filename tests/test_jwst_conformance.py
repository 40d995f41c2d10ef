"""jwst 3.0.0's own SkyMatchStep and Image3Pipeline tests, run against our classes.

jwst's test modules are run unchanged from the installed jwst package, in a
subprocess (the swap of ``SkyMatchStep`` for ``PixelSkyMatchStep`` never
reaches this process), by ``tests/jwst_conformance/skymatch_plus_conformance.py``
under jwst's own pytest settings (``jwst_conformance.ini``: warnings are
errors, xfail is strict).  Every case must pass, except those listed in
``tests/jwst_conformance/expected_failures.py``, which must fail as listed.

``SKYMATCH_PLUS_CONFORMANCE_CLASS=stock`` runs the same harness on jwst's
stock ``SkyMatchStep`` (no expected failures): a check of the harness itself.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import jwst_skymatch_plus

HERE = Path(__file__).resolve().parent / "jwst_conformance"
PLUGIN = "skymatch_plus_conformance"
CLASS_ENV = "SKYMATCH_PLUS_CONFORMANCE_CLASS"
PIPELINE_ENV = "SKYMATCH_PLUS_CONFORMANCE_PIPELINE"

SKYMATCH_TESTS = "jwst.skymatch.tests.test_skymatch"
IMAGE3_TESTS = ("jwst.pipeline.tests.test_calwebb_image3", "jwst.stpipe.tests.test_cal_logs")

#: pipeline variant -> (test modules, number of jwst test cases the run must report)
RUNS = {
    # 147 cases of test_skymatch; 4 of test_calwebb_image3 and
    # test_cal_logs::test_nircam_pipeline_cal_logs (the plugin deselects the rest).
    "image3": ((SKYMATCH_TESTS, *IMAGE3_TESTS), 147 + 5),
    "image3_plus": (IMAGE3_TESTS, 5),
}


def _expected_failures() -> dict:
    spec = importlib.util.spec_from_file_location("expected_failures", HERE / "expected_failures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXPECTED_FAILURES


def _step_class() -> str:
    return os.environ.get(CLASS_ENV, "plus").strip().lower() or "plus"


def _outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """``module::test`` -> (outcome, message) from pytest's junit XML."""
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        keys = [p.get("value") for p in case.iter("property") if p.get("name") == "jwst_test"]
        key = keys[0] if keys else f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = tag
                if tag == "skipped" and element.get("type") == "pytest.xfail":
                    outcome = "xfailed"
                message = element.get("message") or ""
                if outcome in ("failure", "error"):
                    # The last lines of the traceback name the failing assertion.
                    lines = [line for line in (element.text or "").splitlines() if line.strip()]
                    message = "\n      ".join([message.splitlines()[0] if message else "", *lines[-4:]])
                break
        outcomes[key] = (outcome, message)
    return outcomes


def _run_jwst_tests(tmp_path: Path, modules, step_class: str, pipeline: str):
    junit = tmp_path / "junit.xml"
    env = dict(os.environ)
    package_root = str(Path(jwst_skymatch_plus.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, str(HERE), env.get("PYTHONPATH", "")) if p)
    # jwst's test_calwebb_image3 calls the asn_from_list console script.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    env[CLASS_ENV] = step_class
    env[PIPELINE_ENV] = pipeline
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(HERE / "jwst_conformance.ini"),
        "--rootdir",
        str(HERE),
        "--noconftest",  # jwst's conftest.py asks CRDS for its context; the plugin stands in
        "-p",
        PLUGIN,
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "--basetemp",
        str(tmp_path / "basetemp"),
        "--junitxml",
        str(junit),
        "-q",
        "-rfE",
        "--pyargs",
        *modules,
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600, check=False
    )
    if not junit.exists():
        output = done.stdout[-5000:] + "\n" + done.stderr[-5000:]
        pytest.fail(f"jwst's tests did not run (exit {done.returncode}):\n{output}")
    return done, _outcomes(junit)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", list(RUNS))
def test_jwst_conformance(tmp_path, pipeline):
    step_class = _step_class()
    if step_class == "stock" and pipeline == "image3_plus":
        pytest.skip("calwebb_image3_plus always runs PixelSkyMatchStep: no stock variant")
    modules, n_cases = RUNS[pipeline]
    expected = _expected_failures()[pipeline] if step_class == "plus" else {}

    done, outcomes = _run_jwst_tests(tmp_path, modules, step_class, pipeline)

    problems = []
    if len(outcomes) != n_cases:
        problems.append(f"{len(outcomes)} jwst test cases ran, expected {n_cases}")
    stale = sorted(set(expected) - set(outcomes))
    if stale:
        problems.append("expected_failures.py lists tests that did not run:\n  " + "\n  ".join(stale))
    unexpected = {k: v for k, v in outcomes.items() if v[0] not in ("passed", "xfailed")}
    for key, (outcome, message) in sorted(unexpected.items()):
        if "XPASS(strict)" in message:
            problems.append(f"{key}: now PASSES: remove it from expected_failures.py")
        elif key in expected:
            problems.append(f"{key}: fails differently than listed ({outcome}):\n      {message}")
        else:
            problems.append(f"{key}: {outcome}:\n      {message}")
    n_xfailed = sum(v[0] == "xfailed" for v in outcomes.values())
    summary = (
        f"step={step_class} pipeline={pipeline}: {len(outcomes)} cases, "
        f"{sum(v[0] == 'passed' for v in outcomes.values())} passed, {n_xfailed} expected failures"
    )
    assert not problems, (
        summary + "\n" + "\n".join(problems) + "\n--- pytest output ---\n" + done.stdout[-3000:]
    )
    assert done.returncode == 0, summary + "\n" + done.stdout[-3000:] + done.stderr[-3000:]
