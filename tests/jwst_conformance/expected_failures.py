"""jwst tests expected to fail with our classes swapped in: the one list, pruned as they are fixed.

Each entry is ``test id: (exception, reason)``; the plugin marks it strict xfail
with ``raises=exception``.  So a listed test that passes (XPASS) fails the
conformance run: delete its line.  A listed test failing with another
exception fails the run too: its cause changed, update the entry.

Classes of failure (what each means: tests/jwst_conformance/README.rst):

G  (permanent) the test reads meta.cal_step.<name> for every step_defs entry; our pipeline's
   extra stages (get_wcs_adjust, apply_wcs_adjust, level_match) have no such schema entry.
"""

G_EXTRA_STAGES = "G: test reads meta.cal_step.<name> for every step_defs entry; ours has 3 more stages"

IMAGE3 = "jwst.pipeline.tests.test_calwebb_image3::"

#: Keyed by SKYMATCH_PLUS_CONFORMANCE_PIPELINE; used only with our step
#: (SKYMATCH_PLUS_CONFORMANCE_CLASS=plus).  The stock step has none.
EXPECTED_FAILURES: dict[str, dict[str, tuple[type[BaseException], str]]] = {
    # PixelSkyMatchStep in jwst's test_skymatch (147) and in Image3Pipeline (5): none.
    "image3": {},
    # Image3PlusPipeline in the 5 image3 tests.
    "image3_plus": {
        IMAGE3 + "test_run_image3_single_model": (AttributeError, G_EXTRA_STAGES),
    },
}
