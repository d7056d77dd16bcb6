"""The verified TLS context of MTA-STS deliveries and policy fetches (``outbound_tls_ca_file``)."""

import pytest

from colony.settings import ConfigError, Settings
from colony_edge.mta_sts import verified_tls_context


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_ca_file_that_does_not_load_is_named_with_the_fix(tmp_path, content):
    """A missing or unreadable bundle stopped the edge with a bare `[Errno 2] No such file or
    directory` or `NO_CERTIFICATE_OR_CRL_FOUND`, naming neither the setting nor the file."""
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        verified_tls_context(Settings(outbound_tls_ca_file=path))
    message = str(info.value)
    assert message.startswith(f"COLONY_OUTBOUND_TLS_CA_FILE={path}") and "unset it" in message

