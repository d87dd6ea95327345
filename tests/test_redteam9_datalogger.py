"""Red team 9, R9b-4: the installer's page for a datalogger's token also hands out the household's sign-in.

PRIVACY.md ("A household's datalogger"): an organization that installs, supplies or controls a household's datalogger
holds its token, which "posts that household's readings and does nothing else ... cannot sign in to its pages"; the
installer's page shows each token "for whom it is for, once". But the page the installer gets when it makes or
replaces a datalogger's token (`POST /ui/installer/households/{id}/datalogger_token`: a new dongle, a household made
before datalogger tokens, the datalogger's organization changed) is the *sign-in link* page: agent/web/installer.py
`new_datalogger_token` renders `_link_page`, which always mints a fresh household sign-in link
(`sign_in_url`) and shows it with its QR code, headed "Sign-in link for hh_...", above the datalogger's token. Whoever
is handed that page to set up the datalogger (the organization's technician scanning "the QR code" into the dongle's
app) holds a one-time sign-in to the household's pages for 24 hours: its consents, endpoint, appliances, access log
(and R9b-1: what it sets up there outlives a rotation). Each replacement also takes one of the household's 8
outstanding links (agent/web/signin.py LINKS_PER_SUBJECT: after 8 replacements its oldest printed link ends; not
measured). The operator API's `POST /households/{id}/datalogger_token` answers the token only.

Measured: the datalogger page's link signed a fresh browser in as the household (303 to /ui/me), which then read the
household's consents page and granted a consent.

Closed: the datalogger-token page (templates/datalogger_token.html) shows the datalogger's token only (no link, no QR
of a link); a household's sign-in link only on the "new link" and "new household" pages.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.agent import make_config
from tests.helpers.web import Browserless, signed_in


async def test_the_page_for_the_datalogger_signs_no_one_in_as_the_household(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    org_id, _ = await running.create_org("Dongle Co", "supplier")
    household_id, _ = await running.create_household()
    operator = await signed_in(running, "operator", "operator")
    await operator.get("/ui/installer")
    status, html, _ = await operator.post(f"/ui/installer/households/{household_id}/datalogger_token", {})
    assert status == 200 and re.search(r'id="datalogger-token">edge_dl_', html), html
    await operator.close()
    link = re.search(r'id="sign-in-link" href="([^"]+)"', html)
    signed_in_as_household = False
    if link:  # the page the datalogger's installer holds, used as it is
        technician = Browserless(running.base)
        status, _, headers = await technician.sign_in_with(link.group(1))
        if status == 303 and headers.get("Location") == "/ui/me":
            status, page, _ = await technician.get("/ui/me/consents")
            status, _, _ = await technician.post("/ui/me/consents", {"organization": org_id, "service": "aggregates",
                                                                      "action": "grant"})
            signed_in_as_household = status == 303 and running.agent.registry.consent_state(
                household_id, org_id, "aggregates")
        await technician.close()
    print(f"the datalogger page carries a sign-in link: {bool(link)}; with it the technician granted the household's "
          f"consent: {signed_in_as_household}")
    assert not link, "the page for the datalogger's token carries a sign-in link of the household"
