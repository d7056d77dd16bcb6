"""The seed's SharedDomains examples (Storage Best Practice, Fast Storage appendices)."""

from pathlib import Path

import pytest

from colony.storage.foldering import FolderingError, folders, path_element
from colony.storage.layout import StorageLayout, account_paths, domain_dir, locate

ROOT = Path("/var/CommuniGate")


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize("layout, expected", [
    (StorageLayout(), "SharedDomains/company.com/jsmith.macnt"),
    (StorageLayout("1"), "SharedDomains/company.com/j.sub/jsmith.macnt"),
    (StorageLayout("1-1"), "SharedDomains/company.com/j.sub/s.sub/jsmith.macnt"),
    (StorageLayout("2-1"), "SharedDomains/company.com/js.sub/m.sub/jsmith.macnt"),
    (StorageLayout("2-2"), "SharedDomains/company.com/js.sub/mi.sub/jsmith.macnt"),
    (StorageLayout(domain_levels=1), "SharedDomains/c.sub/company.com/jsmith.macnt"),
    (StorageLayout(domain_levels=2), "SharedDomains/c.sub/o.sub/company.com/jsmith.macnt"),
    (StorageLayout("1-1", domain_levels=1), "SharedDomains/c.sub/company.com/j.sub/s.sub/jsmith.macnt"),
])
def test_seed_account_directories(layout, expected):
    paths = account_paths(ROOT, "company.com", "jsmith", layout)
    assert rel(paths.account_dir) == expected
    assert paths.settings_file == paths.account_dir / "account.settings"
    assert paths.info_file == paths.account_dir / "account.info"


def test_fast_storage_after_the_domain():
    paths = account_paths(ROOT, "company.com", "albert", StorageLayout("1", fast_storage_index=1))
    assert rel(paths.account_dir) == "SharedDomains/company.com/a.sub/albert.macnt"
    assert rel(paths.settings_file) == "SharedDomains/company.com/fast/a.sub/albert.settings"
    assert rel(paths.info_file) == "SharedDomains/company.com/fast/a.sub/albert.info"


def test_fast_storage_under_shared_domains():
    paths = account_paths(ROOT, "company.com", "albert", StorageLayout("1-1", fast_storage_index=0))
    assert rel(paths.account_dir) == "SharedDomains/company.com/a.sub/l.sub/albert.macnt"
    assert rel(paths.settings_file) == "SharedDomains/fast/company.com/a.sub/l.sub/albert.settings"


def test_fast_index_beyond_the_path_stops_before_the_account():
    paths = account_paths(ROOT, "company.com", "albert", StorageLayout("1", fast_storage_index=50))
    assert rel(paths.settings_file) == "SharedDomains/company.com/a.sub/fast/albert.settings"


def test_from_provisioning_matches_admin_model():
    layout = StorageLayout.from_provisioning({"account_foldering": "1-1", "domain_foldering": True,
                                              "fast_storage_index": None})
    assert layout == StorageLayout("1-1", 1, None)
    assert StorageLayout.from_provisioning({}) == StorageLayout()
    assert rel(domain_dir(ROOT, "company.com", layout)) == "SharedDomains/c.sub/company.com"


def test_short_names_padded_and_unsafe_characters_escaped():
    assert folders("a", "1-1") == ["a.sub", "_.sub"]
    assert path_element("Al/ice") == "al%2fice"
    assert path_element("..") == "%2e%2e"
    assert path_element("josé") == "jos%c3%a9"
    with pytest.raises(FolderingError, match="foldering method 'x'"):
        StorageLayout("x")


def test_locate_finds_account_under_old_layout_while_it_moves(tmp_path):
    old, new = StorageLayout(), StorageLayout("1")
    moved, waiting = "jsmith", "albert"
    account_paths(tmp_path, "company.com", moved, new).account_dir.mkdir(parents=True)
    account_paths(tmp_path, "company.com", waiting, old).account_dir.mkdir(parents=True)
    paths, exists = locate(tmp_path, "company.com", moved, new, old)
    assert exists and paths.account_dir.parent.name == "j.sub"
    paths, exists = locate(tmp_path, "company.com", waiting, new, old)
    assert exists and paths.account_dir.parent.name == "company.com"
    paths, exists = locate(tmp_path, "company.com", "newbie", new, old)
    assert not exists and paths.account_dir.parent.name == "n.sub"


def test_find_account_under_any_layout(tmp_path):
    from colony.storage.layout import find_account
    old = StorageLayout("2-1", domain_levels=1)
    account_paths(tmp_path, "company.com", "jsmith", old).account_dir.mkdir(parents=True)
    paths, layout = find_account(tmp_path, "company.com", "jsmith", StorageLayout("1"))
    assert layout == old and paths.account_dir.is_dir()
    assert find_account(tmp_path, "company.com", "nobody", StorageLayout()) is None
