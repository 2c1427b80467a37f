package queue

// Validation shared by every backend, so that the embedded and the
// distributed store refuse exactly the same requests with the same errors.

// Validate checks d: a non-empty account of at most MaxAccountLen bytes.
func (d Device) Validate() error {
	if d.Account == "" {
		return invalidf("device %q has no account", d.String())
	}
	if len(d.Account) > MaxAccountLen {
		return invalidf("account of device %.40q… is longer than %d bytes", d.Account, MaxAccountLen)
	}
	return nil
}

// Validate checks p against the Store contract. Backends call it before
// touching storage; it returns an error wrapping ErrInvalid.
func (p *Put) Validate() error {
	if p.ServerID == 0 || p.ServerID > MaxServerID {
		return invalidf("server id %d out of range 1..%d", p.ServerID, uint64(MaxServerID))
	}
	if err := (Device{Account: p.Sender, ID: p.SenderDevice}).Validate(); err != nil {
		return invalidf("sender: %v", err)
	}
	if len(p.ClientID) != ClientIDSize {
		return invalidf("client id is %d bytes, want %d", len(p.ClientID), ClientIDSize)
	}
	if p.ServerTime.UnixMilli() <= 0 {
		return invalidf("server time %v is not after 1970", p.ServerTime)
	}
	if p.ExpiresAt.UnixMilli() <= p.ServerTime.UnixMilli() {
		return invalidf("expiry %v is not after server time %v", p.ExpiresAt, p.ServerTime)
	}
	if len(p.Shared) > MaxPayloadSize {
		return invalidf("shared payload of %d bytes exceeds the limit of %d", len(p.Shared), MaxPayloadSize)
	}
	if len(p.Recipients) == 0 {
		return invalidf("no recipients")
	}
	if len(p.Recipients) > MaxRecipients {
		return invalidf("%d recipients exceed the limit of %d", len(p.Recipients), MaxRecipients)
	}
	for i := range p.Recipients {
		r := &p.Recipients[i]
		if err := r.Device.Validate(); err != nil {
			return invalidf("recipient %d: %v", i, err)
		}
		if len(r.Payload) > MaxPayloadSize {
			return invalidf("payload for %s of %d bytes exceeds the limit of %d", r.Device, len(r.Payload), MaxPayloadSize)
		}
		if len(r.Payload) == 0 && len(p.Shared) == 0 {
			return invalidf("recipient %s has no payload and the put has no shared payload", r.Device)
		}
	}
	// Distinct devices: a device listed twice would get one message twice
	// under one server id, which no backend can store.
	if n := len(p.Recipients); n <= 16 {
		for i := 1; i < n; i++ {
			for j := 0; j < i; j++ {
				if p.Recipients[i].Device == p.Recipients[j].Device {
					return invalidf("recipient %s listed twice", p.Recipients[i].Device)
				}
			}
		}
	} else {
		seen := make(map[Device]struct{}, n)
		for i := range p.Recipients {
			d := p.Recipients[i].Device
			if _, dup := seen[d]; dup {
				return invalidf("recipient %s listed twice", d)
			}
			seen[d] = struct{}{}
		}
	}
	return nil
}

// SharedRefs returns how many recipients get the shared payload.
func (p *Put) SharedRefs() int {
	if len(p.Shared) == 0 {
		return 0
	}
	n := 0
	for i := range p.Recipients {
		if len(p.Recipients[i].Payload) == 0 {
			n++
		}
	}
	return n
}

// ValidateFetch checks Fetch's arguments.
func ValidateFetch(d Device, limit int) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if limit < 1 || limit > MaxFetch {
		return invalidf("fetch limit %d out of range 1..%d", limit, MaxFetch)
	}
	return nil
}
