"""Host-driven tests: a test's own pytest file (`pytest_run`) driving its machine from
outside through `DrivenMachine` (`driven_machine`).
"""
