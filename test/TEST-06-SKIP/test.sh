#!/bin/bash
# A guest that finds its requirements missing exits 77: meson shows SKIP, not FAIL.
echo "skipping: this test only shows what a skip looks like"
exit 77
