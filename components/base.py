"""The decorator every component uses: our image, and no pip install of kfp at run time."""

from __future__ import annotations

import functools

from kfp import dsl

from kubedistill.pipeline.images import COMPONENTS_IMAGE

component = functools.partial(dsl.component, base_image=COMPONENTS_IMAGE, install_kfp_package=False)
