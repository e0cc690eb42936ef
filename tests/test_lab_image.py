"""The lab image's package list and cache key (pure; the build itself is in the e2e test)."""
import datetime
from pathlib import Path

from agentctl.lab import image

ROOT = Path(__file__).resolve().parent.parent


def test_package_list_is_the_union_of_roles_and_lab_needs():
    pkgs = image.package_list(ROOT)
    assert pkgs == sorted(set(pkgs))
    for role in ("base", "proxy", "agent"):
        assert set(image.read_package_file(ROOT / "roles" / role / "packages.txt")) <= set(pkgs)
    for needed in ("cloud-init", "locales", "systemd", "dbus", "iproute2", "lynis"):
        assert needed in pkgs


def test_read_package_file_skips_comments(tmp_path):
    f = tmp_path / "packages.txt"
    f.write_text("# comment\nsudo\n\n  curl  # inline\n")
    assert image.read_package_file(f) == ["sudo", "curl"]


def test_proxy_requirements_keep_the_pins():
    reqs = image.proxy_requirements(ROOT)
    assert "mitmproxy==11.0.2" in reqs and "bcrypt<5" in reqs
    assert [r for r in reqs if r.startswith("mitmproxy")] == ["mitmproxy==11.0.2"]


def test_ubuntu_image_gets_what_pip_gives_an_ubuntu_host():
    """Python 3.12: proxy/pyproject.toml's own requirement, mitmproxy 12 (no pin of ours,
    no bcrypt<5: mitmproxy >= 12.2 needs bcrypt 5), markers resolved for 3.12."""
    reqs = image.proxy_requirements(ROOT, "ubuntu-24.04")
    mitm = [r for r in reqs if r.startswith("mitmproxy")]
    assert len(mitm) == 1 and ">=12.2" in mitm[0] and "<13" in mitm[0]
    assert not any(r.startswith("bcrypt") for r in reqs) and not any(";" in r for r in reqs)


def test_cache_key_changes_with_packages_distro_and_week_only():
    monday, sunday, next_week = datetime.date(2026, 11, 16), datetime.date(2026, 11, 22), datetime.date(2026, 11, 23)
    base = image.cache_key("debian-12", ["a", "b"], ["x==1"], monday)
    assert base == image.cache_key("debian-12", ["b", "a"], ["x==1"], sunday)  # order and weekday do not matter
    assert base != image.cache_key("debian-12", ["a", "b"], ["x==1"], next_week)
    assert base != image.cache_key("debian-12", ["a", "b", "c"], ["x==1"], monday)
    assert base != image.cache_key("debian-12", ["a", "b"], ["x==2"], monday)
    assert base != image.cache_key("ubuntu-24.04", ["a", "b"], ["x==1"], monday)
    assert base.startswith("debian-12-2026w47-")


def test_prune_keeps_only_the_current_image(tmp_path):
    for name in ("debian-12-2026w46-aaaa", "debian-12-2026w47-bbbb", "ubuntu-24.04-2026w46-cccc", ".tmp-x"):
        (tmp_path / name).mkdir()
    image.prune_old_images(tmp_path, tmp_path / "debian-12-2026w47-bbbb")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-x", "debian-12-2026w47-bbbb", "ubuntu-24.04-2026w46-cccc"]


def test_unknown_distro_is_refused_before_anything_is_built(tmp_path):
    import pytest
    with pytest.raises(image.ImageBuildError, match="unknown distro"):
        image.build_image(tmp_path / "x", "arch", [], [], lambda _m: None)
    assert not (tmp_path / "x").exists()
