"""The unit and end-to-end tests, a package so that they import their helpers (e2e,
helpers, images, stub_worker) and each other as `tests.NAME`: pytest puts the checkout,
not tests/, on sys.path, and harness is imported from it too."""
