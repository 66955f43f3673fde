package services

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// systemd's D-Bus names.
const (
	systemdDest      = "org.freedesktop.systemd1"
	managerPath      = "/org/freedesktop/systemd1"
	managerInterface = "org.freedesktop.systemd1.Manager"
	unitInterface    = "org.freedesktop.systemd1.Unit"
	serviceInterface = "org.freedesktop.systemd1.Service"
	propsInterface   = "org.freedesktop.DBus.Properties"
)

// DBus is the real Systemd: one D-Bus connection to systemd.
//
// It speaks godbus directly, with go-systemd only for unit path escaping:
// go-systemd's Conn opens two connections, subscribes to every unit's
// PropertiesChanged on the bus, and its signal dispatcher reads the
// subscriber fields without the lock that SetPropertiesSubscriber takes
// (a data race under -race). Here the match rules name the watched
// units' object paths, so the bus daemon forwards only their signals.
type DBus struct {
	conn *dbus.Conn
}

// DialSystem connects to systemd over the system bus or, for root when no
// bus daemon runs, over systemd's private socket /run/systemd/private.
func DialSystem(ctx context.Context) (*DBus, error) {
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err == nil {
		return &DBus{conn: conn}, nil
	}
	if os.Geteuid() == 0 {
		if c, perr := dbus.Dial("unix:path=/run/systemd/private", dbus.WithContext(ctx)); perr == nil {
			if perr = c.Auth([]dbus.Auth{dbus.AuthExternal(fmt.Sprint(os.Getuid()))}); perr == nil {
				return &DBus{conn: c}, nil // no Hello: there is no bus daemon
			}
			c.Close()
		}
	}
	return nil, fmt.Errorf("connect to systemd over the system D-Bus (is this a systemd host with dbus running?): %w", err)
}

// DialAddress connects to systemd (or anything serving its API) through
// the bus daemon at a D-Bus address such as
// "unix:path=/run/dbus/system_bus_socket".
func DialAddress(ctx context.Context, address string) (*DBus, error) {
	conn, err := dbus.Connect(address, dbus.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("connect to D-Bus at %s: %w", address, err)
	}
	return &DBus{conn: conn}, nil
}

// Close closes the connection; a Subscribe channel then closes.
func (d *DBus) Close() error { return d.conn.Close() }

func unitPath(unit string) dbus.ObjectPath {
	return dbus.ObjectPath(managerPath + "/unit/" + sddbus.PathBusEscape(unit))
}

// Subscribe implements Systemd: a match rule per unit, then the
// Manager.Subscribe call without which systemd sends no unit signals.
func (d *DBus) Subscribe(ctx context.Context, units []string) (<-chan string, error) {
	byPath := make(map[dbus.ObjectPath]string, len(units))
	for _, u := range units {
		p := unitPath(u)
		byPath[p] = u
		err := d.conn.AddMatchSignalContext(ctx,
			dbus.WithMatchObjectPath(p),
			dbus.WithMatchInterface(propsInterface),
			dbus.WithMatchMember("PropertiesChanged"))
		if err != nil && len(d.conn.Names()) > 0 {
			// On a bus this is fatal; on systemd's private socket (no
			// bus daemon, no names) there is nothing to match with and
			// systemd sends every signal anyway.
			return nil, fmt.Errorf("add D-Bus match for %s: %w", u, err)
		}
	}
	sigs := make(chan *dbus.Signal, 64)
	d.conn.Signal(sigs)
	if err := d.conn.Object(systemdDest, managerPath).CallWithContext(ctx, managerInterface+".Subscribe", 0).Err; err != nil {
		d.conn.RemoveSignal(sigs)
		return nil, fmt.Errorf("systemd %s.Subscribe: %w", managerInterface, err)
	}
	out := make(chan string, 64)
	go func() {
		defer close(out)
		defer d.conn.RemoveSignal(sigs)
		for {
			select {
			case <-ctx.Done():
				return
			case s, ok := <-sigs:
				if !ok {
					return // connection closed
				}
				u, watched := byPath[s.Path]
				if !watched || s.Name != propsInterface+".PropertiesChanged" || len(s.Body) == 0 {
					continue
				}
				if iface, _ := s.Body[0].(string); iface != unitInterface && iface != serviceInterface {
					continue
				}
				select {
				case out <- u:
				default: // the watcher is behind and will re-read anyway
				}
			}
		}
	}()
	return out, nil
}

// UnitState implements Systemd. It reads four properties rather than
// GetAll, whose reply holds a hundred-odd.
func (d *DBus) UnitState(ctx context.Context, unit string) (UnitState, error) {
	obj := d.conn.Object(systemdDest, unitPath(unit))
	props := map[string]dbus.Variant{}
	for _, name := range []string{"LoadState", "ActiveState", "SubState"} {
		var v dbus.Variant
		if err := obj.CallWithContext(ctx, propsInterface+".Get", 0, unitInterface, name).Store(&v); err != nil {
			return UnitState{}, fmt.Errorf("get %s.%s of %s: %w", unitInterface, name, unit, err)
		}
		props[name] = v
	}
	if strings.HasSuffix(unit, ".service") {
		var v dbus.Variant
		err := obj.CallWithContext(ctx, propsInterface+".Get", 0, serviceInterface, "NRestarts").Store(&v)
		var dbusErr dbus.Error
		switch {
		case err == nil:
			props["NRestarts"] = v
		case errors.As(err, &dbusErr) && (strings.HasSuffix(dbusErr.Name, ".UnknownProperty") || strings.HasSuffix(dbusErr.Name, ".UnknownInterface") || strings.HasSuffix(dbusErr.Name, ".InvalidArgs")):
			// systemd before v235 has no NRestarts; a not-found unit has
			// no Service interface.
		default:
			return UnitState{}, fmt.Errorf("get %s.NRestarts of %s: %w", serviceInterface, unit, err)
		}
	}
	return decodeState(unit, props)
}

// decodeState turns D-Bus property values into a UnitState, checking
// their D-Bus types: a wrong type means we are not talking to systemd.
func decodeState(unit string, props map[string]dbus.Variant) (UnitState, error) {
	s := UnitState{Unit: unit}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"LoadState", &s.LoadState}, {"ActiveState", &s.ActiveState}, {"SubState", &s.SubState}} {
		v, ok := props[f.name]
		if !ok {
			return UnitState{}, fmt.Errorf("unit %s: property %s missing", unit, f.name)
		}
		str, ok := v.Value().(string)
		if !ok {
			return UnitState{}, fmt.Errorf("unit %s: property %s has D-Bus type %s, want s", unit, f.name, v.Signature())
		}
		*f.dst = str
	}
	if v, ok := props["NRestarts"]; ok {
		n, ok := v.Value().(uint32)
		if !ok {
			return UnitState{}, fmt.Errorf("unit %s: property NRestarts has D-Bus type %s, want u", unit, v.Signature())
		}
		s.Restarts = n
	}
	return s, nil
}
