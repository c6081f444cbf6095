"""SmileQuote.behind_forward: under the "current" policy a price that did not follow a
forward move large enough to take its fair value outside its own bid/ask is flagged (its
maker has not requoted yet); a move inside the band, a requote, a requote that arrived just
before the forward it was made on, and the "quote" policy flag nothing."""

from __future__ import annotations

from svc_iv.core import IvConfig, IvCore
from tests.iv.test_core import NOW, NS, F, by_symbol, coin_price, name, ticker, top
from tests.iv.test_quote_forward import CALL, CARRIER, K
from tests.iv.test_quote_forward import _core as _chain

PUT = name(K, False)
CURRENT = IvConfig(forward_policy="current")


def _core(config: IvConfig = CURRENT) -> IvCore:
    return _chain(config)


def _quote_on(core: IvCore, forward: float, t_ns: int, symbol: str = CALL) -> None:
    """A maker's quote 0.78/0.82 vol (a 4-vol-point band) on `forward`."""
    call = symbol == CALL
    bid = coin_price(K, call, 0.78, forward=forward)
    ask = coin_price(K, call, 0.82, forward=forward)
    core.on_top(top(symbol, bid, ask, t=t_ns))


def _behind(core: IvCore, now_ns: int) -> dict[str, bool]:
    (smile,) = core.flush(now_ns)
    return {s: q.behind_forward for s, q in by_symbol(smile).items() if s in (CALL, PUT)}


def test_a_quote_that_does_not_follow_a_jump_is_behind_until_requoted() -> None:
    core = _core()
    _quote_on(core, F, NOW)
    _quote_on(core, F, NOW, PUT)
    assert _behind(core, NOW) == {CALL: False, PUT: False}

    # A 3% jump: the call's fair price moves by delta x dF, several half spreads; the
    # coin-quoted premium moves too (inverse), but by far less.
    jumped = F * 1.03
    core.on_ticker(ticker(CARRIER, t=NOW + 5 * NS, forward_usd=jumped))
    assert _behind(core, NOW + 5 * NS + NS // 10) == {CALL: True, PUT: True}

    # The call's maker requotes on the new forward; the put's has not yet.
    _quote_on(core, jumped, NOW + 5 * NS + NS // 5)
    assert _behind(core, NOW + 6 * NS) == {CALL: False, PUT: True}


def test_a_move_inside_the_band_flags_nothing() -> None:
    """Quiet markets: the forward drifts by a few basis points, the fair value stays inside
    the 4-vol band, and the price that did not move is the maker's view (the venues'
    convention)."""
    core = _core()
    _quote_on(core, F, NOW)
    for step in range(1, 6):
        core.on_ticker(ticker(CARRIER, t=NOW + step * NS, forward_usd=F * (1 + 2e-4 * step)))
        assert _behind(core, NOW + step * NS + 1) == {CALL: False, PUT: False}


def test_a_requote_just_before_its_forward_arrives_is_not_behind() -> None:
    """Books and the ticker carrying the forward come on separate channels: a requote made
    on the new forward may arrive before it (within behind_forward_grace_s)."""
    core = _core()
    _quote_on(core, F, NOW)
    jumped = F * 1.03
    _quote_on(core, jumped, NOW + 5 * NS - NS // 10)
    core.on_ticker(ticker(CARRIER, t=NOW + 5 * NS, forward_usd=jumped))
    assert _behind(core, NOW + 5 * NS + 1)[CALL] is False


def test_the_quote_policy_flags_nothing() -> None:
    """Under "quote" a price is solved on its own forward, so it is consistent as it is."""
    core = _core(IvConfig(forward_policy="quote"))
    _quote_on(core, F, NOW)
    core.on_ticker(ticker(CARRIER, t=NOW + 5 * NS, forward_usd=F * 1.03))
    assert _behind(core, NOW + 6 * NS)[CALL] is False
