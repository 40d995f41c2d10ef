"""Writing a step's results into the exposures of a ModelLibrary.

A step's result for one exposure is a :class:`ModelUpdate`: metadata values,
a record under ``meta.skymatch_plus`` and planes subtracted from the data.
:func:`write_updates` writes them.  A library in memory gets them at once.
An on-disk library gets them as each model is next borrowed: stpipe would
otherwise open and save every exposure once for the step and once more in
its closing pass (``ModelLibrary.finalize_result``), about 70 ms a
full-frame exposure spent on asdf serialization and schema validation,
while whoever borrows the models next (outlier detection, resample, a
save) opens each of them anyway.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..inputs import borrowed

__all__ = ["RECORD_KEY", "ModelUpdate", "write_updates"]

log = logging.getLogger(__name__)

#: Where our steps record what they did, under ``meta``.
RECORD_KEY = "skymatch_plus"


class _Surface(Protocol):
    def evaluate(self, shape: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelUpdate:
    """What one step writes into one exposure.

    Parameters
    ----------
    values : mapping
        Metadata values by their path under ``meta`` (``"background.level"``),
        assigned through the model's schema.
    records : mapping
        Entries of the step's record under ``meta.skymatch_plus``, by name
        (``{"pixel_skymatch": {...}}``).
    corrections : tuple
        Subtracted from the data, in order: surfaces (objects with
        ``evaluate(shape)``) or constants.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    records: Mapping[str, Mapping] = field(default_factory=dict)
    corrections: tuple[_Surface | float, ...] = ()

    def apply(self, model) -> None:
        """Write the update into an open model."""
        for surface in self.corrections:
            model.data -= surface if isinstance(surface, float) else surface.evaluate(model.data.shape)
        for path, value in self.values.items():
            *parents, leaf = path.split(".")
            node = model.meta
            for name in parents:
                node = getattr(node, name)
            setattr(node, leaf, value)
        if self.records:
            model.meta.instance.setdefault(RECORD_KEY, {}).update(self.records)

    def flat_metadata(self) -> dict[str, Any]:
        """The metadata the update writes, keyed as ``read_metadata(flatten=True)`` keys it."""
        out = {f"meta.{path}": value for path, value in self.values.items()}
        _flatten(out, f"meta.{RECORD_KEY}", self.records)
        return out

    def overlay(self, meta: dict, flatten: bool) -> None:
        """Show the update in ``read_metadata``'s output ``meta`` (flat or nested), in place."""
        if flatten:
            # A record is replaced whole: keys of the old one go.
            for name in self.records:
                prefix = f"meta.{RECORD_KEY}.{name}."
                for key in [k for k in meta if k.startswith(prefix)]:
                    del meta[key]
            meta.update(self.flat_metadata())
            return
        tree = meta.setdefault("meta", {})
        for path, value in self.values.items():
            *parents, leaf = path.split(".")
            node = tree
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
        if self.records:
            tree.setdefault(RECORD_KEY, {}).update(copy.deepcopy(dict(self.records)))


def _flatten(out: dict, prefix: str, value) -> None:
    # As stdatamodels flattens a tree: mappings by key, lists by position.
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(out, f"{prefix}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            _flatten(out, f"{prefix}.{position}", item)
    else:
        out[prefix] = value


def write_updates(library, updates: Mapping[int, ModelUpdate]) -> None:
    """Write each exposure's update into ``library``.

    Models in memory are updated now.  A model still in its file (every
    model of an on-disk library; a model of an in-memory library built from
    an association that nobody has borrowed yet) is updated as it is next
    borrowed: an on-disk library's until that model is shelved with
    ``modify=True`` (then its temporary file holds the update), an in-memory
    library's once (it then keeps the model).  ``read_metadata`` shows the
    updates meanwhile, and stpipe's closing pass stamps such models as they
    are borrowed rather than opening them all (see the module's docstring).
    Input files are never written.

    Parameters
    ----------
    library : ModelLibrary
        The step's library.
    updates : mapping
        :class:`ModelUpdate` by member index.
    """
    on_disk = getattr(library, "_on_disk", False)
    loaded = getattr(library, "_loaded_models", None)
    if not on_disk and loaded is None:  # not stpipe's library as we know it
        loaded = range(len(library))
    now = {} if on_disk else {i: u for i, u in updates.items() if i in loaded}
    later = {i: u for i, u in updates.items() if i not in now}
    for index, update in sorted(now.items()):
        with borrowed(library, index, modify=True, validate=False) as model:
            update.apply(model)
    if later:
        _UpdatesOnBorrow(library, later, keep=not on_disk)


class _UpdatesOnBorrow:
    """Per-instance wrappers of a library's borrow, shelve, read_metadata and closing pass.

    With ``keep`` (an in-memory library, which keeps a model once loaded) an
    update is done with at the model's first borrow; otherwise when the
    model is shelved with ``modify=True``.  Wrappers of later steps wrap
    earlier ones, so updates apply in the order the steps ran.  Once every
    update is done they pass calls straight through.
    """

    _WRAPPED = ("borrow", "shelve", "read_metadata")

    def __init__(self, library, updates: Mapping[int, ModelUpdate], keep: bool = False) -> None:
        self.pending = dict(updates)
        self.keep = keep
        self.stamps: list[tuple[Any, list]] = []
        self.lent: dict[int, int] = {}  # id(model) -> index, for shelve(model) without an index
        # Weak: the library holds this object through the wrappers, and a
        # reference cycle would delay the removal of its temporary folder.
        self._library = weakref.ref(library)
        # An earlier step's wrapper, else None for the library's own method.
        self._inner = {name: vars(library).get(name) for name in self._WRAPPED}
        for name in self._WRAPPED:
            if hasattr(library, name):
                setattr(library, name, getattr(self, name))
        library.finalize_result = self.finalize_result
        log.debug("%d exposure update(s) wait for the models to be borrowed.", len(self.pending))

    def _next(self, name: str):
        inner = self._inner[name]
        if inner is not None:
            return inner
        library = self._library()
        return getattr(type(library), name).__get__(library)

    def finalize_result(self, step, reference_files_used) -> None:
        # stpipe's closing pass: its per-model stamps go on as models are
        # borrowed; a model whose update is saved already is stamped now.
        library = self._library()
        if vars(library).get("finalize_result") == self.finalize_result:
            del library.finalize_result
        self.stamps.append((step, list(reference_files_used)))
        saved = [index for index in range(len(library)) if index not in self.pending]
        if saved:
            with library:
                for index in saved:
                    model = library.borrow(index)
                    step.finalize_result(model, reference_files_used)
                    library.shelve(model, index)

    def borrow(self, index):
        model = self._next("borrow")(index)
        update = self.pending.get(index)
        if update is not None:
            try:
                update.apply(model)
                for step, references in self.stamps:
                    step.finalize_result(model, references)
            except BaseException:
                self._next("shelve")(model, index, modify=False)
                if self.keep:
                    # An in-memory library kept the half-updated model: drop
                    # it, so the next borrow reads the file and starts over.
                    getattr(self._library(), "_loaded_models", {}).pop(index, None)
                raise
            if self.keep:
                del self.pending[index]
            else:
                self.lent[id(model)] = index
        return model

    def shelve(self, model, index=None, modify=True):
        lent = self.lent.get(id(model))
        self._next("shelve")(model, index, modify)
        self.lent.pop(id(model), None)
        if modify:
            self.pending.pop(lent if index is None else index, None)

    def read_metadata(self, idx, flatten=True):
        meta = self._next("read_metadata")(idx, flatten=flatten)
        update = self.pending.get(idx)
        if update is not None:
            update.overlay(meta, flatten)
        return meta

    # Copying and pickling a wrapped library: the copy's wrappers must act on
    # the copied library (held weakly like the original), not the original.
    def __deepcopy__(self, memo: dict) -> _UpdatesOnBorrow:
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.pending = copy.deepcopy(self.pending, memo)
        new.keep = self.keep
        new.stamps = list(self.stamps)  # the same steps stamp the copies
        new.lent = {}
        new._inner = copy.deepcopy(self._inner, memo)
        new._library = weakref.ref(copy.deepcopy(self._library(), memo))
        return new

    def __getstate__(self) -> dict:
        # Steps do not travel: an unpickled library's models miss stpipe's stamps.
        state = {**vars(self), "stamps": [], "lent": {}}
        state["_library"] = self._library()
        return state

    def __setstate__(self, state: dict) -> None:
        library = state.pop("_library")
        vars(self).update(state)
        self._library = weakref.ref(library)
