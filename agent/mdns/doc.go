// Package mdns advertises the robot on the local network over multicast
// DNS-SD (RFC 6762/6763) as "<robot id>._lekiwi._tcp.local." or
// "<robot id>._xle._tcp.local.", with a TXT record carrying the robot id,
// robot type, agent version and OS version, so that control (and any
// Avahi/Bonjour browser) finds robots that are on the network but not
// connected.
//
// The record set comes from github.com/hashicorp/mdns (MDNSService, its
// Zone). Its Server is not used, because it does not interoperate well with
// Avahi and Bonjour:
//
//   - it never announces, so passive caches (avahi-browse without a fresh
//     query, other robots' daemons) learn about us only when they ask;
//   - it answers every query by unicast to the querier, even questions that
//     ask for a multicast answer, so no other host's cache is refreshed;
//   - it answers legacy unicast queries (source port not 5353, e.g. dig or
//     nss-mdns) without echoing the question and with the wrong id;
//   - it rejects queries with the TC bit and ignores known answers;
//   - it never says goodbye, so browsers show a stopped robot until the
//     TTL expires.
//
// Advertiser closes those gaps with its own responder on the same records:
// announcements on start (three, 1 s and 2 s apart) and periodically,
// multicast answers to QM questions on the interface the query came in on,
// unicast answers to QU questions and legacy queries, known-answer
// suppression, cache-flush bits on unique records, and goodbye packets
// (TTL 0) on shutdown. IPv4 only.
package mdns
