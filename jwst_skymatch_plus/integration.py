"""``stpipe.steps`` entry point: lets ``strun`` find our steps by class or alias."""

__all__ = ["get_steps"]


def get_steps() -> list[tuple[str, str, bool]]:
    """Steps and pipelines provided by this package.

    Returns
    -------
    list of tuple (str, str, bool)
        Fully qualified class name, alias, and whether it is a Pipeline.
        Classes are named, not imported, to keep ``strun`` start-up fast; a
        test checks that every entry resolves.

    """
    return [
        ("jwst_skymatch_plus.PixelSkyMatchStep", "pixel_skymatch", False),
        ("jwst_skymatch_plus.LevelMatchStep", "level_match", False),
        ("jwst_skymatch_plus.steps.wcs_adjust.GetWCSAdjustStep", "get_wcs_adjust", False),
        ("jwst_skymatch_plus.steps.wcs_adjust.ApplyWCSAdjustStep", "apply_wcs_adjust", False),
        ("jwst_skymatch_plus.Image3PlusPipeline", "calwebb_image3_plus", True),
    ]
