"""The admin API's HTTPS files (api_tls_cert_file / api_tls_key_file) are checked at start."""

from __future__ import annotations

import pytest
import trustme

from colony.settings import ConfigError, Settings
from colony_admin.service import api_tls_files


def test_no_certificate_is_plain_http():
    assert api_tls_files(Settings()) == (None, None)


def test_a_chain_with_its_key_in_one_file_or_two(tmp_path):
    cert = trustme.CA().issue_cert("admin-api")
    both = tmp_path / "both.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(both))
    assert api_tls_files(Settings(api_tls_cert_file=both)) == (both, None)
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    assert api_tls_files(Settings(api_tls_cert_file=chain, api_tls_key_file=key)) == (chain, key)


@pytest.mark.parametrize("case", ["missing", "not pem", "key without certificate"])
def test_files_that_do_not_load_name_the_settings(tmp_path, case):
    """uvicorn loaded them only once the server started, and a missing file stopped the admin
    API with a bare `[Errno 2] No such file or directory` naming no setting."""
    cert = tmp_path / "cert.pem"
    if case == "not pem":
        cert.write_text("not a certificate\n")
    settings = (Settings(api_tls_key_file=cert) if case == "key without certificate"
                else Settings(api_tls_cert_file=cert))
    with pytest.raises(ConfigError) as info:
        api_tls_files(settings)
    assert str(info.value).startswith("COLONY_API_TLS_"), str(info.value)
