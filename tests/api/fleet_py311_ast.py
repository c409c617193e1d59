"""Works around CPython 3.11's spurious `SystemError: AST constructor recursion depth mismatch`
(python/cpython#106905, fixed in 3.11.8 and 3.12; Debian 12 ships 3.11.2).

Hypothesis describes a lambda by parsing its module's source with `ast.parse`; Schemathesis asks
for such descriptions deep inside its own recursion, where 3.11 can raise that error at random,
and the test run then fails as "flaky". A description that hits it is retried on a fresh thread,
whose stack is shallow, and comes out the same. Loaded by `fleet_py311_ast.pth` in the
Schemathesis virtualenv (tests/env/up installs both); does nothing on other Python versions.
"""

import sys
import threading

if sys.version_info[:2] == (3, 11):
    try:
        from hypothesis.internal import filtering, lambda_sources
    except Exception:  # no Hypothesis in this environment: nothing to patch
        lambda_sources = None

    if lambda_sources is not None:
        _original = lambda_sources.lambda_description

        def lambda_description(f):
            try:
                return _original(f)
            except SystemError:
                out = []
                worker = threading.Thread(target=lambda: out.append(_original(f)))
                worker.start()
                worker.join()
                if out:
                    return out[0]
                raise

        lambda_sources.lambda_description = lambda_description
        if getattr(filtering, "lambda_description", None) is _original:
            filtering.lambda_description = lambda_description
