"""Organizations subscribe to aggregates pushed to their endpoint as signed webhooks."""

from __future__ import annotations

from aiohttp import web

from agent.api.bodies import SubscribeIn, decode
from agent.api.common import ApiError, Http, agent_of, caller, owned_by_caller, read_body
from agent.api.data import check_access, level_of
from agent.api.spec import NO_CONTENT, NOT_FOUND, ORG, Route, ok_json
from agent.auth import ORGANIZATION
from agent.delivery.filters import FilterError, FilterSet
from agent.delivery.targets import TargetError, check_literal_host, check_url



def _owned(request: web.Request):
    delivery = agent_of(request).delivery
    org, sub = owned_by_caller(request, delivery.subscriptions, "sub_id", "subscription")
    return org, delivery, sub


def _gone_meanwhile(delivery, sub) -> None:
    """A DELETE of the same subscription landed while this change waited for the disk."""
    if delivery.subscriptions.get(sub.id) is not sub:
        raise ApiError(Http.NOT_FOUND, "no such subscription")


async def subscribe(request: web.Request) -> web.Response:
    org = caller(request).organization
    agent = agent_of(request)
    body = decode(await read_body(request), SubscribeIn)
    config = agent.config.delivery
    try:
        endpoint = check_url(body.endpoint, config.allow_http)
        check_literal_host(endpoint, config.allow_private_endpoints)
    except TargetError as err:
        raise ApiError(Http.ENDPOINT_REFUSED, str(err)) from None
    level = level_of(agent, org)
    # Pushed windows are the same records GET /data answers with (exact or noisy, by the level's kind).
    window = body.window or ("1m" if "1m" in level.windows else level.finest)
    window, tag = check_access(level, org, window, body.tag, agent.config.privacy.tags)
    try:
        FilterSet.parse(body.filter)
    except FilterError as err:
        raise ApiError(Http.INVALID_FILTER, str(err)) from None
    # on disk before it is answered
    sub, secret = await agent.delivery.subscribe_async(org.id, endpoint, body.interval, window, tag, body.filter)
    if sub.id not in agent.delivery.subscriptions:  # its organization was deleted meanwhile, with it
        raise ApiError(Http.NOT_FOUND, "the organization was deleted while the subscription was written")
    made = agent.delivery.describe(sub)  # now: its organization may be deleted while the audit entry is written
    await agent.audit.record_durable(org.id, ORGANIZATION, "subscription.create", subscription_id=sub.id,
                                     window=window, tag=tag)
    return web.json_response({**made, "secret": secret}, status=201)


async def list_subscriptions(request: web.Request) -> web.Response:
    org = caller(request).organization
    delivery = agent_of(request).delivery
    subs = [delivery.describe(s) for s in delivery.subscriptions.values() if s.organization_id == org.id]
    return web.json_response({"subscriptions": subs})


async def get_subscription(request: web.Request) -> web.Response:
    _, delivery, sub = _owned(request)
    return web.json_response(delivery.describe(sub))


async def delete_subscription(request: web.Request) -> web.Response:
    org, delivery, sub = _owned(request)
    if not await delivery.delete_async(sub.id):  # on disk before it is answered
        raise ApiError(Http.NOT_FOUND, "no such subscription")
    await agent_of(request).audit.record_durable(org.id, ORGANIZATION, "subscription.delete", subscription_id=sub.id)
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret; the old one keeps signing beside it for a day, so receivers switch without a gap."""
    _, delivery, sub = _owned(request)
    secret, old_until = await delivery.rotate_secret_async(sub.id)
    _gone_meanwhile(delivery, sub)
    return web.json_response({"id": sub.id, "secret": secret, "previous_secret_valid_until": old_until})


async def enable_subscription(request: web.Request) -> web.Response:
    """After a 410 Gone disabled it; queued messages are sent again."""
    _, delivery, sub = _owned(request)
    await delivery.enable_async(sub.id)
    _gone_meanwhile(delivery, sub)
    return web.json_response(delivery.describe(sub))


SUB_PATH = "/data/subscriptions/{sub_id}"
ROUTES = (
    Route("POST", "/data/subscribe", subscribe, ORG,
          "Subscribe to aggregates pushed as Standard Webhooks (each window's recorded release, exact or noisy by the "
          "level); the secret is shown once", "organization", {"201": ok_json("SubscriptionCreated", "Subscribed")},
          body="SubscribeIn"),
    Route("GET", "/data/subscriptions", list_subscriptions, ORG, "The organization's subscriptions", "organization",
          {"200": ok_json("Subscriptions")}),
    Route("GET", SUB_PATH, get_subscription, ORG, "One subscription and its delivery state", "organization",
          {"200": ok_json("Subscription")}, errors=NOT_FOUND),
    Route("DELETE", SUB_PATH, delete_subscription, ORG, "Unsubscribe; queued messages are dropped", "organization",
          {"204": NO_CONTENT}, errors=NOT_FOUND),
    Route("POST", f"{SUB_PATH}/secret", rotate_secret, ORG,
          "A new signing secret; the old one signs beside it for a day", "organization",
          {"200": ok_json("SecretRotated")}, errors=NOT_FOUND),
    Route("POST", f"{SUB_PATH}/enable", enable_subscription, ORG, "Enable again after a 410 Gone disabled it",
          "organization", {"200": ok_json("Subscription")}, errors=NOT_FOUND),
)
