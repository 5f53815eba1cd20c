#!/usr/bin/env python3
"""Evaluates feature flags with the real OpenFeature Python SDK and its OFREP provider.

Used by the end-to-end tests (tests/e2e/tests/toggle.rs) to check that an unmodified
OpenFeature client reads Stagecoach toggles through the operator's OFREP endpoint.
`cargo xtask test` installs the SDK into target/e2e-venv (see xtask/src/test.rs).

Usage:
    ofrep_client.py BASE_URL CASES

BASE_URL is what an application would configure, such as
http://127.0.0.1:8081/apps/billing/billing/stages/demo. CASES is a JSON list of
{"flag": KEY, "context": {...}, "type": "boolean"|"string"|"integer"|"float"|"object",
"default": VALUE}; `type` defaults to boolean and `default` to false. `targetingKey` in a
context becomes the OpenFeature targeting key, every other entry an attribute.

Prints one JSON list with, per case: flag, value, variant, reason, errorCode,
errorMessage (the SDK's evaluation details).
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def text(value):
    """An SDK enum (or string, or None) as plain JSON."""
    if value is None:
        return None
    return getattr(value, "value", value)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base_url, cases = argv[1], json.loads(argv[2])
    api.set_provider(OFREPProvider(base_url=base_url, timeout=10.0))
    client = api.get_client("stagecoach-e2e")
    getters = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }
    results = []
    for case in cases:
        attributes = dict(case.get("context") or {})
        targeting_key = attributes.pop("targetingKey", None)
        context = EvaluationContext(targeting_key=targeting_key, attributes=attributes)
        getter = getters[case.get("type", "boolean")]
        details = getter(case["flag"], case.get("default", False), context)
        results.append(
            {
                "flag": case["flag"],
                "value": details.value,
                "variant": details.variant,
                "reason": text(details.reason),
                "errorCode": text(details.error_code),
                "errorMessage": details.error_message,
            }
        )
    api.shutdown()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
