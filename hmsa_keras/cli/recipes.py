"""Finds the flagfile recipes of ``flags/``, in a source checkout or an installed package."""

from __future__ import annotations

import os


def recipes_dir() -> str:
    """The folder holding ``*.cfg`` recipes: the installed ``hmsa_keras.recipes`` package
    (setup.py maps ``flags/`` onto it) or, in a source checkout, ``<repo>/flags``."""
    try:
        import importlib.resources

        path = str(importlib.resources.files("hmsa_keras.recipes"))
        if os.path.isdir(path) and any(n.endswith(".cfg") for n in os.listdir(path)):
            return path
    except (ImportError, TypeError):
        pass
    return os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "flags"
    )


def recipe_path(name: str) -> str:
    folder = recipes_dir()
    path = os.path.join(folder, name if name.endswith(".cfg") else name + ".cfg")
    if not os.path.isfile(path):
        available = (
            sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".cfg"))
            if os.path.isdir(folder)
            else []
        )
        raise SystemExit(
            f"ERROR: --recipe: unknown recipe {name!r}; available: {', '.join(available)}"
        )
    return path
