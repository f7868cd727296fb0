from hil.stats import Stats


def test_median_spread_and_robust_sigma():
    s = Stats.of([10, 12, 11, 50])  # one outlier
    assert (s.n, s.median, s.min, s.max) == (4, 11.5, 10, 50)
    assert s.mad == 1.0 and abs(s.sigma - 1.4826) < 1e-9  # the outlier barely moves it
    assert s.format("ms") == "11.5ms [10..50, n=4]"
    assert Stats.of([3.0]).format() == "3" and Stats.of([]) is None
    assert Stats.of([1, 1, 1]).format() == "1 (n=3, all equal)"
