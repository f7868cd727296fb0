# The scenario files here are run by tests/integration/test_nvme_driver.py (with the
# assertions on what they leave behind); the pytest plugin is not to collect them again.
collect_ignore_glob = ["*.yaml"]
