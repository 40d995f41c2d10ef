"""jwst tests expected to fail with our classes swapped in: the one list, pruned as the step is fixed.

Each entry is ``test id: (exception, reason)``; the plugin marks it strict xfail
with ``raises=exception``.  So a listed test that passes (XPASS) fails the
conformance run: delete its line.  A listed test failing with another
exception fails the run too: its cause changed, update the entry.

Classes of failure (what each means and where: tests/jwst_conformance/README.rst):

A  meta.background.method is 'pixel-<skymethod>'; jwst expects '<skymethod>'.
B1 one jwst group (same group_id) means nothing to match: jwst leaves method/subtracted None.
B2 one jwst group still gets the 'global' sky in global+match (every level = min sky).
B3 grouping='visit' splits the overlap graph that jwst's group_id groups keep connected.
C  identical all-zero images: zero-variance pairs are dropped, so every exposure is SKIPPED.
D1 skystat='mode' on pixel differences misses the 0.01 tolerance (pair errors ~6x underestimated).
D2 skystat='midpt' global sky ~half a bin low (stcal SkyStats), misses the 0.01 tolerance.
E  skipped inside a pipeline, stpipe sets meta.cal_step.<class_alias> = pixel_skymatch, not skymatch.
F  image3_plus needs group_id before any step; mock files lack meta.observation.program_number.
G  (permanent) the test loops over step_defs; our extra stages have no meta.cal_step schema entry.

"Then X" comments: what the test stops on next once the first cause is fixed.
"""

A_METHOD = "A: meta.background.method is 'pixel-<skymethod>', jwst expects '<skymethod>'"
B1_ONE_GROUP = "B1: one group_id group, nothing to match: jwst leaves meta.background.method None"
C_ZERO_VARIANCE = "C: identical zero images: zero-variance pairs dropped, exposures SKIPPED"
E_CAL_STEP = "E: skipped step sets meta.cal_step.pixel_skymatch instead of meta.cal_step.skymatch"
F_NO_GROUP_ID = "F: group_id needs meta.observation.program_number (stpipe falls back to exposureNNNN)"
G_EXTRA_STAGES = "G: test reads meta.cal_step.<name> for every step_defs entry; ours has 3 more stages"

SKY = "jwst.skymatch.tests.test_skymatch::"
IMAGE3 = "jwst.pipeline.tests.test_calwebb_image3::"

#: Keyed by SKYMATCH_PLUS_CONFORMANCE_PIPELINE; used only with our step
#: (SKYMATCH_PLUS_CONFORMANCE_CLASS=plus).  The stock step has none.
EXPECTED_FAILURES: dict[str, dict[str, tuple[type[BaseException], str]]] = {
    "image3": {
        SKY + "test_skymatch[match-False-median-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-False-median-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-False-median-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-False-median-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-False-mean-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-False-mean-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-False-mean-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-False-mean-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-False-midpt-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-False-midpt-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-False-midpt-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-False-midpt-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-False-mode-False-False]": (AssertionError, A_METHOD),  # then D1
        SKY + "test_skymatch[match-False-mode-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-False-mode-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-False-mode-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-median-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-True-median-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-median-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-True-median-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-mean-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-True-mean-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-mean-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-True-mean-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-midpt-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-True-midpt-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-midpt-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-True-midpt-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-mode-False-False]": (AssertionError, A_METHOD),  # then D1
        SKY + "test_skymatch[match-True-mode-False-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[match-True-mode-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[match-True-mode-True-True]": (AssertionError, B1_ONE_GROUP),
        SKY + "test_skymatch[global+match-False-median-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-median-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-False-median-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-median-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-False-mean-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-mean-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-False-mean-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-mean-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-False-midpt-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-midpt-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-False-midpt-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-midpt-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-False-mode-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-mode-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-False-mode-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-False-mode-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-median-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-True-median-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-median-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-True-median-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-mean-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-True-mean-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-mean-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-True-mean-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-midpt-False-False]": (AssertionError, A_METHOD),  # then D2
        SKY + "test_skymatch[global+match-True-midpt-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-midpt-True-False]": (AssertionError, A_METHOD),  # then D2
        SKY + "test_skymatch[global+match-True-midpt-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-mode-False-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-True-mode-False-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch[global+match-True-mode-True-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch[global+match-True-mode-True-True]": (AssertionError, A_METHOD),  # then B2
        SKY + "test_skymatch_overlap[match-False-mean]": (AssertionError, A_METHOD),  # then B3
        SKY + "test_skymatch_overlap[match-True-mean]": (AssertionError, A_METHOD),  # then B3
        SKY + "test_asn_input": (AssertionError, A_METHOD),
        SKY + "test_skymatch_2x[match-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch_2x[match-True]": (AssertionError, A_METHOD),
        SKY + "test_skymatch_2x[global+match-False]": (AssertionError, A_METHOD),
        SKY + "test_skymatch_2x[global+match-True]": (AssertionError, A_METHOD),
        SKY + "test_output_is_not_input[True]": (AssertionError, C_ZERO_VARIANCE),
        IMAGE3 + "test_run_image3_single_model": (AssertionError, E_CAL_STEP),
    },
    "image3_plus": {
        IMAGE3 + "test_run_image3_pipeline[True]": (KeyError, F_NO_GROUP_ID),
        IMAGE3 + "test_run_image3_pipeline[False]": (KeyError, F_NO_GROUP_ID),
        IMAGE3 + "test_run_image3_single_model": (AttributeError, G_EXTRA_STAGES),  # then E
    },
}
