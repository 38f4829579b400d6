"""The HTTP edge: what only the Litestar API needs.

Litestar dependencies and parameters (:mod:`notifier.http.params`), the strict body decoding
(:mod:`notifier.http.body`), and the mapping of errors to RFC 9457 problem documents with
their OpenAPI descriptions (:mod:`notifier.http.problems`). Domain code (schemas, use cases,
tasks) never imports this package, so the worker runs without Litestar loaded
(``tests/test_imports.py``).
"""
