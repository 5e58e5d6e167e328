"""The three-line way an engine author runs the conformance kit under pytest."""

from conformance import conformance_test
from tests.conformance_engines import load_sample_engine

SampleEngine = load_sample_engine()

test_sample_engine = conformance_test(lambda: SampleEngine("m", 16, 0.0))
test_sample_engine_strict = conformance_test(lambda: SampleEngine("m", 16, 0.01), strict=True)
