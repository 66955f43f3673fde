// Package stream serves /v1/stream: live fleet messages for dashboards and
// tools over one WebSocket, with topic subscriptions, filters, throttles and
// priorities.
//
// # Feed
//
// A Hub is fed by what control already produces. The gateway publishes
// every heartbeat it receives (HeartbeatMessage; heartbeats are not in the
// event log, so a node publishes only its own robots' heartbeats), and Tail
// follows the event log by sequence on every node and publishes each
// committed event (FromEvent), so telemetry, robot events, presence and
// commands of the whole fleet reach a dashboard on any node.
//
// # Topics
//
//	robot.<id>.heartbeat            live heartbeat (bulk; this node's robots)
//	robot.<id>.telemetry            TelemetryReported (bulk)
//	robot.<id>.event                RobotEvent, kind = the robot event's kind
//	robot.<id>.presence             RobotRegistered/Connected/Disconnected/Offline
//	robot.<id>.command              CommandQueued/Delivered/Response
//	teleoperation.started|stopped   teleop events (also robot.<id>.event)
//	deployment.<id>.progress        update events of a deployment
//	alert.<id>                      critical: safety.*/alert.* kinds, severity error, Alert* log events
//	log.<Type>                      every log event (also under the topics above)
//
// A pattern's segments match literally, "*" matches one segment and a
// final ">" matches one or more: robot.*.heartbeat, robot.lekiwi-7.>,
// log.>. A message published under several topics (a teleop event) is
// delivered once per matching subscription, under its first topic.
//
// # Protocol
//
// Authenticate the upgrade request (Authorization: Bearer <token>, role
// operator or above). Browsers, which cannot set that header on a
// WebSocket, offer the subprotocols "lekiwi.stream.v1" and
// "lekiwi.bearer.<token in unpadded base64url>" instead (see
// TokenFromSubprotocols); control selects lekiwi.stream.v1. Every frame is
// one JSON text message. The client sends:
//
//	{"type":"subscribe","id":"hb","topics":["robot.*.heartbeat"],
//	 "robots":["lekiwi-1"],"kinds":["teleop.started"],
//	 "throttle":{"rate":1,"strategy":"latest"}}
//	{"type":"unsubscribe","id":"hb"}
//	{"type":"ping"}
//
// robots and kinds are optional filters; throttle is optional and limits
// each topic of the subscription to rate messages per second with strategy
// sample (first of each interval), latest (first at once, then the newest
// at the end of each interval) or aggregate (one summary per interval).
// Subscribing again with the same id replaces the subscription.
//
// Control answers {"type":"subscribed"|"unsubscribed","id":…},
// {"type":"pong"} or {"type":"error","id":…,"message":…}, and sends
//
//	{"type":"message","sub":"hb","topic":"robot.lekiwi-1.heartbeat","robot_id":"lekiwi-1",
//	 "kind":"heartbeat","priority":"bulk","time":"…","seq":0,"data":{…}}
//	{"type":"aggregate","sub":…,"topic":…,"count":12,"first":…,"last":…,
//	 "data":<newest data>,"stats":{"resources.cpu_percent":{"min","max","mean","n"}}}
//	{"type":"lagging","message":…}    the client fell behind: latest-only delivery
//	{"type":"caught_up","replaced":N} normal delivery again; N frames were replaced
//
// # Priorities and slow consumers
//
// Messages are critical (safety alerts), normal (events) or bulk
// (heartbeats, telemetry). A client's frames leave critical first, then
// normal, then bulk; critical messages bypass throttles. Publish never
// waits for a client: when a client has Options.QueueLimit frames waiting,
// it switches to latest-only delivery, keeping one frame per subscription
// and topic (memory bounded by the topics, not by how far behind it is)
// until it has read everything. Critical frames are never replaced; a
// client that leaves Options.CriticalLimit of them unread is disconnected
// (1008), so it reconnects rather than miss alerts silently.
package stream
