// Package discovery browses the local network over multicast DNS-SD for
// robots advertising _lekiwi._tcp or _xle._tcp (see agent/mdns) and reports
// each one found, changed or gone as a Discovered value, so that control can
// record robots that are on the network but not connected.
//
// It is written on github.com/miekg/dns rather than the hashicorp/mdns
// client, whose one-shot queries miss announcements, emit an entry once per
// query, only from answers that arrive complete, and ask for missing SRV and
// TXT records with a PTR question. The Browser keeps one socket on port
// 5353 in the mDNS group, which hears announcements and multicast answers and
// sends fully compliant queries (the first one asking for unicast answers,
// RFC 6762 §5.4), and one socket on an ephemeral port for legacy unicast
// queries, whose answers come back to it alone — so robots are found whether
// a responder answers by multicast (Avahi, agent/mdns) or only by unicast to
// the querier (hashicorp/mdns' own server), and even when another responder
// on the control host holds port 5353 for unicast. Queries back off from 1 s
// to MaxQueryInterval, carry known answers, and records are refreshed at
// 80% of their TTL (RFC 6762 §5.2). IPv4 only.
package discovery
