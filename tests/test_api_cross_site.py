"""Every API route refuses a request a browser marks ``Sec-Fetch-Site: cross-site``
(a no-cors fetch from another site's page sends no Origin, but browsers send this)."""

from __future__ import annotations

from .test_api import Pair, pair, running_pair  # noqa: F401  (pair: the fixture)
from .test_api_hostile import assert_json_error


async def test_cross_site_fetches_are_refused_everywhere(pair: Pair) -> None:  # noqa: F811
    cross = {"Sec-Fetch-Site": "cross-site"}
    for path in ("/health", "/status", "/metrics", "/messages"):
        await assert_json_error(await pair.api_a.get(path, headers=cross), 403, "origin")
    for site in ("same-origin", "none"):
        answer = await pair.api_a.get("/health", headers={"Sec-Fetch-Site": site})
        assert answer.status_code == 200, site


async def test_a_link_from_another_site_still_opens_the_page(pair: Pair) -> None:  # noqa: F811
    answer = await pair.api_a.get("/", headers={"Sec-Fetch-Site": "cross-site",
                                                "Sec-Fetch-Mode": "navigate"})
    assert answer.status_code == 200
