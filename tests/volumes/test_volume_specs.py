"""The volume configuration: dstack's ``auto_cleanup_duration`` is read; unsupported fields are refused by name."""

import pytest

from core.specs import SpecError
from volumes.specs import parse_volume_spec

VOLUME = {"type": "volume", "name": "data-eu", "backend": "sim", "region": "eu-west-1", "size": "50GB"}


@pytest.mark.parametrize(("value", "seconds"), [
    ("1h", 3600), ("30m", 1800), ("1h30m", 5400), (3600, 3600), ("3600", 3600),
    ("off", None), (False, None), (-1, None), (0, None), (None, None),
])
def test_auto_cleanup_duration_is_normalized_to_seconds(value, seconds):
    spec = parse_volume_spec({**VOLUME, "auto_cleanup_duration": value})
    assert spec["auto_cleanup_seconds"] == seconds
    assert "auto_cleanup_duration" not in spec


def test_a_volume_without_auto_cleanup_is_kept():
    assert parse_volume_spec(VOLUME)["auto_cleanup_seconds"] is None


@pytest.mark.parametrize(("value", "word"), [
    ("soon", "invalid duration"), (-5, "negative"), ("400d", "at most"), ([1], "invalid duration"),
    (True, "invalid duration"),
])
def test_a_bad_auto_cleanup_duration_names_the_field(value, word):
    with pytest.raises(SpecError) as err:
        parse_volume_spec({**VOLUME, "auto_cleanup_duration": value})
    assert err.value.field == "auto_cleanup_duration" and word in err.value.message


def test_tags_are_kept_and_must_be_strings():
    assert parse_volume_spec({**VOLUME, "tags": {"team": "ml"}})["tags"] == {"team": "ml"}
    with pytest.raises(SpecError) as err:
        parse_volume_spec({**VOLUME, "tags": {"team": 1}})
    assert err.value.field == "tags.team" and "string" in err.value.message


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ["apply", "volumes"])
def test_the_api_answers_400_naming_auto_cleanup_duration(project, sim_backend, api, endpoint):
    from volumes.models import Volume

    if endpoint == "apply":
        yaml = ("type: volume\nname: data-eu\nbackend: sim\nregion: eu-west-1\nsize: 50GB\n"
                "auto_cleanup_duration: sometime\n")
        response = api.post("/api/v1/projects/main/apply/", data=yaml, content_type="application/yaml")
    else:
        doc = {**VOLUME, "auto_cleanup_duration": "sometime"}
        response = api.post("/api/v1/projects/main/volumes/", doc, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["field"] == "auto_cleanup_duration" and "auto_cleanup_duration" in body["detail"]
    assert not Volume.objects.exists()
