"""What runs inside the guest: the test unit and the harness's helper units (`units`),
the fast path's agent (`agent.sh`) and the subtest library tests source
(`testcases.sh`). Backends decide how these reach the guest; the text is the same."""
