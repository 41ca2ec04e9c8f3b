"""Schemathesis hooks for scripts/schemathesis.sh.

Generated bodies name random models, and a request for a model that is not served is a
404 before anything else is read: left alone, almost no generated generation request
would reach validation, let alone the engine. Where a body is an object with a `model`
field, that field is set to the served model (SCHEMATHESIS_MODEL) in most cases; the
rest keep their generated value, so the 404 path stays covered.
"""

import os
import random

import schemathesis

MODEL = os.environ.get("SCHEMATHESIS_MODEL", "")


@schemathesis.hook
def map_body(ctx, body):
    if MODEL and isinstance(body, dict) and "model" in body and random.random() < 0.9:
        body["model"] = MODEL
    return body
