-- Knot Resolver 5: send srv.glimpse.io. to the local glimpse-agent.
-- Add to /etc/knot-resolver/kresd.conf (see docs/resolvers.md). The tests
-- build their configuration from this file, replacing the agent's address.

-- STUB: the agent is authoritative; Knot Resolver asks it without recursion.
policy.add(policy.suffix(policy.STUB({'127.0.0.1@5959'}), {todname('srv.glimpse.io.')}))
-- The domain is not DNSSEC-signed: without this, a validating Knot Resolver
-- answers SERVFAIL for it.
trust_anchors.set_insecure({'srv.glimpse.io.'})
