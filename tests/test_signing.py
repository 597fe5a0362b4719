from urllib.parse import parse_qs, urlsplit

from easel.storage.signing import UrlSigner


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_a_url_is_valid_for_at_least_its_lifetime_and_then_expires() -> None:
    signer = UrlSigner("secret", ttl_s=3600)
    for now in (1_000_000.0, 1_000_000.5, 1_000_359.9, 1_000_360.0):
        q = query(signer.sign("http://h", "outputs/a.png", now=now))
        expires = int(q["expires"])
        assert now + 3600 <= expires < now + 3600 + 360
        assert signer.verify("outputs/a.png", expires, q["signature"], now=now + 3600)
        assert not signer.verify("outputs/a.png", expires, q["signature"], now=expires + 1)


def test_polling_within_a_step_sees_the_same_url() -> None:
    signer = UrlSigner("secret", ttl_s=3600)
    first = signer.sign("http://h", "outputs/a.png", now=999_730.0)
    assert signer.sign("http://h", "outputs/a.png", now=1_000_080.0) == first


def test_a_signature_covers_the_key_the_expiry_and_the_secret() -> None:
    signer = UrlSigner("secret", ttl_s=60)
    q = query(signer.sign("http://h", "outputs/a.png", now=0))
    expires, signature = int(q["expires"]), q["signature"]
    assert signer.verify("outputs/a.png", expires, signature, now=0)
    assert not signer.verify("outputs/b.png", expires, signature, now=0)
    assert not signer.verify("outputs/a.png", expires + 6, signature, now=0)
    assert not UrlSigner("other", ttl_s=60).verify("outputs/a.png", expires, signature, now=0)
