"""KeptAnswers never holds more than its limit, and what it holds is what was kept."""
import ipaddress

from agentctl_proxy.kept import KeptAnswers
from agentctl_proxy.netguard import Resolver


def test_bounded_and_exact():
    kept = KeptAnswers(limit=3)
    for i in range(10):
        assert kept.keep(f"k{i}", i) == i
        assert len(kept) <= 3 and kept[f"k{i}"] == i
    assert all(kept[k] == int(k[1:]) for k in kept)


def test_answer_computes_once_per_key_and_keeps_none():
    kept, calls = KeptAnswers(limit=2), []

    def compute(x):
        calls.append(x)
        return None if x == "none" else x * 2

    assert kept.answer("a", compute, "a") == "aa" and kept.answer("a", compute, "zzz") == "aa"
    assert kept.answer("n", compute, "none") is None and kept.answer("n", compute, "none") is None
    assert calls == ["a", "none"]  # a kept None is not computed again
    assert kept.answer("b", compute, "b") == "bb" and len(kept) == 1  # full: started over


def test_the_deny_list_answers_stay_bounded_and_right():
    r = Resolver(["10.0.0.0/8"])
    for i in range(12_000):
        ip = ipaddress.ip_address(f"192.168.{i // 256 % 256}.{i % 256}") if i % 2 else ipaddress.ip_address(f"10.1.{i // 256 % 256}.{i % 256}")
        assert (r.denied(ip) is not None) == (i % 2 == 0)
    assert len(r._denied) <= 10_000
