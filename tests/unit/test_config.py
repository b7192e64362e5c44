"""Configuration parsing: defaults, profiles, token URL rules and clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import replace

import pytest

from token_vendor.config import DEFAULT_PROFILE, Config, Profile, load_config, profile_for_secret
from token_vendor.errors import ConfigurationError
from token_vendor.igni.token_url import token_url_for, validate_token_url
from token_vendor.models import cache_key

BASE = {"TOKEN_TABLE_NAME": "tokens", "IGNI_SECRET_ID": "igni/default"}


def test_minimal_environment_gives_the_default_profile_and_documented_defaults() -> None:
    # Given only the two required variables
    # When the configuration is loaded
    config = load_config(BASE)
    # Then the default profile names the secret and the policy defaults apply
    assert config.profiles == {DEFAULT_PROFILE: Profile(name="default", secret_id="igni/default")}
    assert config.freshness.refresh_fraction == 0.75
    assert config.freshness.min_remaining_seconds == 300
    assert config.freshness.min_remaining_fraction == 0.10
    assert config.secret_cache_seconds <= 300
    assert config.memory_revalidate_seconds <= 60
    assert config.igni_connect_timeout <= 3
    assert config.igni_read_timeout <= 10
    assert config.kms_key_id is None


def test_missing_table_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="TOKEN_TABLE_NAME"):
        load_config({"IGNI_SECRET_ID": "s"})


def test_missing_secret_and_profiles_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="IGNI_SECRET_ID"):
        load_config({"TOKEN_TABLE_NAME": "t"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SECRET_CACHE_SECONDS", "301"),
        ("MEMORY_REVALIDATE_SECONDS", "61"),
        ("IGNI_CONNECT_TIMEOUT", "4"),
        ("IGNI_READ_TIMEOUT", "11"),
        ("TOKEN_REFRESH_FRACTION", "abc"),
        ("IGNI_MAX_ATTEMPTS", "1.5"),
    ],
)
def test_out_of_range_settings_are_refused_with_their_name(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        load_config({**BASE, name: value})


def test_profiles_are_parsed_next_to_the_default() -> None:
    # Given two extra profiles, one with a scope and one with its own token URL
    profiles = {
        "analytics": {"secret_id": "igni/analytics", "scope": "reports:read"},
        "billing": {
            "secret_id": "igni/billing",
            "token_url": "https://billing.igni.co/api/v1/oauth2/token",
        },
    }
    # When loaded
    config = load_config({**BASE, "IGNI_PROFILES": json.dumps(profiles)})
    # Then all three exist with their fields
    assert set(config.profiles) == {"default", "analytics", "billing"}
    assert config.profiles["analytics"].scope == "reports:read"
    assert config.profiles["billing"].token_url == "https://billing.igni.co/api/v1/oauth2/token"


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        ('{"a": {"scope": "x"}}', "profile 'a': field 'secret_id' is required"),
        ('{"a": {"secret_id": 3}}', "profile 'a': field 'secret_id' must be a string"),
        ('{"a": {"secret_id": "s", "colour": "red"}}', "profile 'a': unknown field 'colour'"),
        ('{"a": {"secret_id": "s", "token_url": "http://igni.co/t"}}', "profile 'a': token URL"),
        ('{"a b": {"secret_id": "s"}}', "profile 'a b': name"),
        ('{"a": "s"}', "profile 'a': must be a JSON object"),
        ("[1]", "IGNI_PROFILES must be a JSON object"),
        ("{", "IGNI_PROFILES is not valid JSON"),
        ('{"default": {"secret_id": "s"}}', "'default' is reserved"),
    ],
)
def test_a_bad_profile_entry_names_the_profile_and_the_field(profiles: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_config({**BASE, "IGNI_PROFILES": profiles})


def test_default_is_refused_as_a_profile_name_even_without_igni_secret_id() -> None:
    # Given IGNI_PROFILES naming a profile 'default' and no IGNI_SECRET_ID to clash with
    env = {"TOKEN_TABLE_NAME": "t", "IGNI_PROFILES": '{"default": {"secret_id": "igni/x"}}'}
    # When the configuration is loaded
    # Then it is refused: /token/default would be a second path to the default profile, past
    # an IAM Deny on GET/token; and the message names neither the secret nor anything of it
    with pytest.raises(ConfigurationError, match="'default' is reserved") as raised:
        load_config(env)
    assert "igni/x" not in raised.value.message


def test_profiles_alone_without_default_secret_are_enough() -> None:
    config = load_config({"TOKEN_TABLE_NAME": "t", "IGNI_PROFILES": '{"x": {"secret_id": "s"}}'})
    assert set(config.profiles) == {"x"}


@pytest.mark.parametrize(
    "url",
    [
        "https://acme.igni.co/api/v1/oauth2/token",
        "http://127.0.0.1:8089/api/v1/oauth2/token",
        "http://localhost:1/api/v1/oauth2/token",
        "http://[::1]:8/api/v1/oauth2/token",
        "HTTP://LOCALHOST:8/api/v1/oauth2/token",
        "https://acme.igni.co:8443/api/v1/oauth2/token?tenant=a%5Cb",
    ],
)
def test_https_or_loopback_http_token_urls_are_accepted(url: str) -> None:
    assert validate_token_url(url, "p") == url


@pytest.mark.parametrize(
    "url",
    [
        "http://acme.igni.co/api/v1/oauth2/token",
        "ftp://127.0.0.1/x",
        "http://10.0.0.1/t",
        "https://",
    ],
)
def test_other_token_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_token_url(url, "p")


# Each is read one way by urllib.parse and another by urllib3 (the client that sends), or
# carries what lets two parsers disagree: refused outright, whatever the host behind it.
HOSTILE_TOKEN_URLS = [
    # urllib.parse: host 127.0.0.1; urllib3: host 127.0.0.2 (or evil.example), plain HTTP
    "http://127.0.0.2\\@127.0.0.1:8089/api/v1/oauth2/token",
    "http://evil.example\\@127.0.0.1:8089/api/v1/oauth2/token",
    "http://evil.example:80\\@localhost/api/v1/oauth2/token",
    "https://acme.igni.co\\@127.0.0.1/api/v1/oauth2/token",
    "http://127.0.0.1\\/api/v1/oauth2/token",
    # userinfo, even empty or percent-encoded
    "http://user:pass@127.0.0.1:8089/api/v1/oauth2/token",
    "https://user@acme.igni.co/api/v1/oauth2/token",
    "http://@127.0.0.1/api/v1/oauth2/token",
    "http://127.0.0.1%2f@evil.example/api/v1/oauth2/token",
    # whitespace, control characters, non-ASCII
    "http://127.0.0.1/api/v1/oauth2/token\r\nHost: evil.example",
    "http://127.0.0.1 /api/v1/oauth2/token",
    "http://127.0.0.1\t/api/v1/oauth2/token",
    "https://acme.igni.co/api/v1/oauth2/token\x00",
    "https://acme.igni.co/api/v1/oauth2/tok\u00e9n",
    "http://\uff11\uff12\uff17.0.0.1/api/v1/oauth2/token",
    # no scheme, no host, an unparseable port
    "//127.0.0.1/api/v1/oauth2/token",
    "http:127.0.0.1/api/v1/oauth2/token",
    "https:///api/v1/oauth2/token",
    "http://127.0.0.1:99999/api/v1/oauth2/token",
    # loopback in name only
    "http://127.1/api/v1/oauth2/token",
    "http://localhost.evil.example/api/v1/oauth2/token",
    "",
]


@pytest.mark.parametrize("url", HOSTILE_TOKEN_URLS)
def test_a_token_url_that_parsers_could_read_differently_is_refused(url: str) -> None:
    # Given a hostile token URL
    # When it is validated (as IGNI_TOKEN_URL, a profile's token_url, or at send time)
    # Then it is a configuration error naming the profile
    with pytest.raises(ConfigurationError, match="profile 'p': token URL"):
        validate_token_url(url, "p")


@pytest.mark.parametrize("url", HOSTILE_TOKEN_URLS[:8])
def test_a_hostile_token_url_is_refused_in_every_setting_that_holds_one(url: str) -> None:
    # Given the URL as IGNI_TOKEN_URL, and as the token_url of a profile in IGNI_PROFILES
    profiles = json.dumps({"analytics": {"secret_id": "igni/a", "token_url": url}})
    # Then loading either configuration fails, as does the rotation function's lookup
    with pytest.raises(ConfigurationError, match="token URL"):
        load_config({**BASE, "IGNI_TOKEN_URL": url})
    with pytest.raises(ConfigurationError, match="profile 'analytics': token URL"):
        load_config({**BASE, "IGNI_PROFILES": profiles})
    with pytest.raises(ConfigurationError, match="token URL"):
        token_url_for(profile_for_secret("igni/default", {"IGNI_TOKEN_URL": url}), "acme")
    with pytest.raises(ConfigurationError, match="token URL"):
        profile_for_secret("igni/a", {"IGNI_PROFILES": profiles})


def test_token_url_is_built_from_the_workspace_of_the_profile_or_the_secret() -> None:
    profile = Profile(name="p", secret_id="s")
    assert token_url_for(profile, "acme") == "https://acme.igni.co/api/v1/oauth2/token"
    with_ws = Profile(name="p", secret_id="s", workspace="corp")
    assert token_url_for(with_ws, "acme") == "https://corp.igni.co/api/v1/oauth2/token"
    with pytest.raises(ConfigurationError, match="no Igni workspace"):
        token_url_for(profile, None)
    with pytest.raises(ConfigurationError, match="workspace"):
        token_url_for(profile, "evil.com/x?")


def test_a_secret_is_recognised_by_name_full_arn_or_partial_arn() -> None:
    from token_vendor.config import same_secret

    arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:igni/analytics-AbC123"
    assert same_secret("igni/analytics", arn)
    assert same_secret(arn, "igni/analytics")
    assert same_secret("arn:aws:secretsmanager:eu-west-1:111122223333:secret:igni/analytics", arn)
    assert not same_secret("igni/billing", arn)


def test_a_secret_outside_the_profiles_gets_the_default_profiles_settings() -> None:
    from token_vendor.config import profile_for_secret

    env = {
        "IGNI_WORKSPACE": "acme",
        "IGNI_SCOPE": "all",
        "IGNI_PROFILES": '{"analytics": {"secret_id": "igni/analytics", "scope": "reports"}}',
    }
    assert profile_for_secret("igni/analytics", env).scope == "reports"
    other = profile_for_secret("igni/default", env)
    assert (other.name, other.workspace, other.scope) == ("default", "acme", "all")


# --------------------------------- issue 13: client authentication, audience, default lifetime


def test_the_oauth_settings_default_to_form_authentication_no_audience_and_an_hour() -> None:
    # Given none of the issue-13 settings
    profile = load_config(BASE).profiles[DEFAULT_PROFILE]
    # Then the client authenticates in the form as Igni's document shows
    assert profile.token_endpoint_auth_method == "client_secret_post"
    assert profile.audience is None
    assert profile.default_expires_in == 3600


def test_the_environment_sets_the_default_profiles_oauth_settings() -> None:
    # Given the three variables
    env = {
        **BASE,
        "IGNI_TOKEN_ENDPOINT_AUTH_METHOD": "client_secret_basic",
        "IGNI_AUDIENCE": "https://api.example",
        "IGNI_DEFAULT_EXPIRES_IN": "900",
        "IGNI_PROFILES": '{"analytics": {"secret_id": "igni/analytics"}}',
    }
    profiles = load_config(env).profiles
    # Then the default profile takes them (as it takes IGNI_TOKEN_URL and IGNI_SCOPE)
    default = profiles[DEFAULT_PROFILE]
    assert default.token_endpoint_auth_method == "client_secret_basic"
    assert default.audience == "https://api.example"
    assert default.default_expires_in == 900
    # And a profile of IGNI_PROFILES keeps its own (here the defaults)
    analytics = profiles["analytics"]
    assert (analytics.token_endpoint_auth_method, analytics.audience) == (
        "client_secret_post",
        None,
    )
    assert analytics.default_expires_in == 3600


def test_a_profile_sets_its_own_oauth_settings() -> None:
    entry = {
        "secret_id": "igni/analytics",
        "token_endpoint_auth_method": "client_secret_basic",
        "audience": "reports",
        "default_expires_in": 120,
    }
    profile = load_config({**BASE, "IGNI_PROFILES": json.dumps({"a": entry})}).profiles["a"]
    assert profile.token_endpoint_auth_method == "client_secret_basic"
    assert profile.audience == "reports"
    assert profile.default_expires_in == 120


@pytest.mark.parametrize(
    "value", ["client_secret_jwt", "private_key_jwt", "none", "Client_Secret_Basic", "basic"]
)
def test_an_unknown_auth_method_is_a_configuration_error_naming_the_variable(value: str) -> None:
    # When the variable holds anything but the two methods
    with pytest.raises(ConfigurationError, match="IGNI_TOKEN_ENDPOINT_AUTH_METHOD") as raised:
        load_config({**BASE, "IGNI_TOKEN_ENDPOINT_AUTH_METHOD": value})
    # Then the error says what is allowed, and does not repeat what was written
    assert raised.value.status == 500
    assert raised.value.code == "configuration_error"
    assert "client_secret_post or client_secret_basic" in raised.value.message
    assert value not in raised.value.message.replace("client_secret_basic", "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("token_endpoint_auth_method", "tls_client_auth"),
        ("token_endpoint_auth_method", 1),
        ("audience", 5),
        ("default_expires_in", "3600"),
        ("default_expires_in", True),
        ("default_expires_in", 59),
        ("default_expires_in", 315_360_001),
        ("default_expires_in", 60.5),
    ],
)
def test_a_bad_oauth_profile_field_names_the_profile_and_the_field(
    field: str, value: object
) -> None:
    profiles = json.dumps({"a": {"secret_id": "s", field: value}})
    with pytest.raises(ConfigurationError, match=f"profile 'a': field '{field}'"):
        load_config({**BASE, "IGNI_PROFILES": profiles})


@pytest.mark.parametrize("value", ["59", "315360001", "abc", "1.5"])
def test_a_bad_default_lifetime_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match="IGNI_DEFAULT_EXPIRES_IN"):
        load_config({**BASE, "IGNI_DEFAULT_EXPIRES_IN": value})


def test_the_rotation_function_reads_the_same_oauth_settings() -> None:
    # Given a secret of the default profile and one of a profile with its own settings
    env = {
        "IGNI_TOKEN_ENDPOINT_AUTH_METHOD": "client_secret_basic",
        "IGNI_AUDIENCE": "aud",
        "IGNI_PROFILES": json.dumps(
            {"b": {"secret_id": "igni/b", "token_endpoint_auth_method": "client_secret_post"}}
        ),
    }
    # Then each is tested as the vendor would exchange it
    default = profile_for_secret("igni/default", env)
    assert (default.token_endpoint_auth_method, default.audience) == ("client_secret_basic", "aud")
    assert profile_for_secret("igni/b", env).token_endpoint_auth_method == "client_secret_post"
    # And an unknown method fails there too
    with pytest.raises(ConfigurationError, match="IGNI_TOKEN_ENDPOINT_AUTH_METHOD"):
        profile_for_secret("igni/default", {"IGNI_TOKEN_ENDPOINT_AUTH_METHOD": "x"})


def test_an_audience_changes_the_cache_key_and_no_audience_keeps_the_old_one() -> None:
    # Given a profile as it was before issue 13, and the same with audiences
    plain = Profile(name="a", secret_id="igni/a", token_url="https://x.igni.co/t", scope="r")
    old_material = "\n".join(["igni/a", "https://x.igni.co/t", "", "r"])
    old_key = "token#" + hashlib.sha256(old_material.encode()).hexdigest()[:32]
    # Then without an audience the key is the one items already carry (no orphaned items after
    # a deploy), and the method or default lifetime do not change it
    assert cache_key(plain) == old_key
    assert cache_key(replace(plain, token_endpoint_auth_method="client_secret_basic")) == old_key
    assert cache_key(replace(plain, default_expires_in=60)) == old_key
    # And each audience is a key of its own, which no scope text can imitate
    one = cache_key(replace(plain, audience="one"))
    assert len({old_key, one, cache_key(replace(plain, audience="two"))}) == 3
    assert cache_key(replace(plain, scope='r\n["x"]', audience=None)) != one
    assert cache_key(replace(plain, scope="r\none")) != one


# ---------------------------------------------------------- RFC 8707 resource indicators


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://api.example/", ("https://api.example/",)),
        ("https://a.example/ urn:igni:reports", ("https://a.example/", "urn:igni:reports")),
        (
            '["https://a.example/", "https://b.example/x?y=1"]',
            ("https://a.example/", "https://b.example/x?y=1"),
        ),
    ],
)
def test_igni_resource_takes_one_uri_several_or_a_json_array(
    raw: str, expected: tuple[str, ...]
) -> None:
    config = load_config({"TOKEN_TABLE_NAME": "t", "IGNI_SECRET_ID": "s", "IGNI_RESOURCE": raw})
    assert config.profiles["default"].resource == expected


@pytest.mark.parametrize(
    "value",
    ["relative/path", "https://a.example/#frag", "", 5, [], ["https://a", 7], ["x y"], ["é:x"]],
)
def test_a_resource_that_is_not_an_absolute_uri_is_refused(value: object) -> None:
    env = {
        "TOKEN_TABLE_NAME": "t",
        "IGNI_PROFILES": json.dumps({"p": {"secret_id": "s", "resource": value}}),
    }
    with pytest.raises(ConfigurationError, match="'resource'"):
        load_config(env)


def test_resources_join_the_cache_key_only_when_set() -> None:
    plain = Profile(name="a", secret_id="igni/a", audience="aud")
    with_resource = replace(plain, resource=("https://api.example/",))
    assert cache_key(replace(with_resource, resource=())) == cache_key(plain)
    keys = {
        cache_key(plain),
        cache_key(with_resource),
        cache_key(replace(with_resource, resource=("https://other.example/",))),
        cache_key(replace(with_resource, audience=None)),
    }
    assert len(keys) == 4


def test_every_numeric_setting_defaults_to_the_config_field_it_sets() -> None:
    # Given no numeric variable set
    config = load_config({"TOKEN_TABLE_NAME": "t", "IGNI_SECRET_ID": "s"})
    # Then each setting is its Config field's default (defined once, on the dataclass)
    for field in dataclasses.fields(Config):
        if field.default is not dataclasses.MISSING:
            assert getattr(config, field.name) == field.default, field.name
    # And a variable sets its field
    assert (
        load_config(
            {"TOKEN_TABLE_NAME": "t", "IGNI_SECRET_ID": "s", "LEASE_SECONDS": "7"}
        ).lease_seconds
        == 7.0
    )
