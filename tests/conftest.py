pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.kafka",
    "tests.fixtures.platform",
    "tests.fixtures.openstack",
]
