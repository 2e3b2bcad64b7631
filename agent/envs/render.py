"""Headless rendering for the tabletop: the GL backend MuJoCo is to use (chosen before mujoco is
imported) and a renderer without the effects that cost render time and teach nothing."""

from __future__ import annotations

import os
import weakref


def choose_gl_backend() -> None:
    """Headless rendering: EGL (Mesa works on CPUs), else OSMesa. Must run before mujoco is imported;
    an explicit MUJOCO_GL always wins."""
    if "MUJOCO_GL" not in os.environ:
        import ctypes.util

        has_egl = ctypes.util.find_library("EGL") is not None
        has_osmesa = ctypes.util.find_library("OSMesa") is not None
        os.environ["MUJOCO_GL"] = "osmesa" if has_osmesa and not has_egl else "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def make_renderer(model, size: int, owner):
    """A size x size `mujoco.Renderer` for `model`, closed when `owner` is collected; a one-line error
    naming the packages when no GL context can be made."""
    import mujoco

    try:
        renderer = mujoco.Renderer(model, size, size)
    except Exception as err:
        raise RuntimeError(
            f"cannot create a headless MuJoCo renderer with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {err}. "
            "Install libegl1 + libegl-mesa0 (EGL) or libosmesa6 and set MUJOCO_GL=osmesa; "
            "or build the env with render_images=False."
        ) from err
    # free the GL context at exit while the interpreter is still whole (OSMesa's own
    # destructor fails noisily during shutdown)
    weakref.finalize(owner, renderer.close)
    # shadows and reflections cost render time and teach nothing here
    scn = renderer.scene
    scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    scn.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
    return renderer
