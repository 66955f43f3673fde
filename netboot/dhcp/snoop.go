package dhcp

import (
	"strconv"
	"time"

	"github.com/lekiwi/heartbeat/netboot/pi"
)

// snoop records the client and queues a DeviceSeen when it is new or when
// what we know about it changed. It never blocks: a full queue drops the
// event (counted) and marks it pending, so the device's next packet retries.
func (s *Server) snoop(c pi.Client, now time.Time) {
	mac := c.MAC.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[mac]
	if !ok {
		if len(s.devices) >= s.cfg.MaxDevices {
			s.evictOldestLocked()
		}
		d = &device{seen: DeviceSeen{MAC: mac, FirstSeen: now}}
		s.devices[mac] = d
		s.metrics.devices.WithLabelValues(strconv.FormatBool(c.IsPi)).Inc()
		d.pending = true
	}
	d.seen.LastSeen = now
	// Learn, never forget: a later packet without option 97 (e.g. the OS's
	// own DHCP client) does not erase the serial the bootloader told us.
	d.seen.IsPi = d.seen.IsPi || c.IsPi
	if c.HasSerial {
		d.seen.Serial = c.Serial.String()
	}
	if c.Revision != 0 {
		d.seen.Revision = c.Revision.String()
	}
	if c.Board != nil {
		d.seen.Model = c.Board.Name()
	}
	if d.seen.IsPi != d.reported.IsPi || d.seen.Serial != d.reported.Serial ||
		d.seen.Revision != d.reported.Revision || d.seen.Model != d.reported.Model {
		d.pending = true
	}
	if !d.pending {
		return
	}
	select {
	case s.events <- d.seen:
		d.reported, d.pending = d.seen, false
	default:
		s.metrics.eventsDropped.Inc()
	}
}

func (s *Server) evictOldestLocked() {
	var oldest string
	var t time.Time
	for mac, d := range s.devices {
		if oldest == "" || d.seen.LastSeen.Before(t) {
			oldest, t = mac, d.seen.LastSeen
		}
	}
	delete(s.devices, oldest)
}
