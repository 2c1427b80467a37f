package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the shared test Redis server and this test's namespace on it.
type Redis struct {
	// Addr is host:port, as go-redis's Options.Addr takes it.
	Addr string
	// Prefix is unique to the test ("t:<name>:<random>:"). Tests must start
	// every key and channel name with it: the server is shared with other
	// tests running at the same time. Keys under it are deleted in
	// t.Cleanup.
	Prefix string
}

// NeedRedis returns the test Redis from HUSH_TEST_REDIS with a fresh
// prefix, after checking the server answers. It fails the test under
// CI=true and skips it otherwise when the server is not configured or
// does not answer.
func NeedRedis(t testing.TB) Redis {
	t.Helper()
	addr := lookup(t, "Redis", EnvRedis)
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	if err := CheckRedis(ctx, addr); err != nil {
		unavailable(t, inCI(), "Redis", fmt.Sprintf("%s=%s does not answer: %v", EnvRedis, addr, err))
	}
	r := Redis{Addr: addr, Prefix: uniqueName(t, ':', 64) + ":"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := deleteRedisPrefix(ctx, addr, r.Prefix); err != nil {
			t.Errorf("testenv: delete Redis keys under %q: %v", r.Prefix, err)
		}
	})
	return r
}

// Client returns a go-redis client for r.Addr, closed in t.Cleanup.
func (r Redis) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// CheckRedis reports whether the Redis server at addr answers PING.
func CheckRedis(ctx context.Context, addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1, PoolSize: 1})
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis %s: %w", addr, err)
	}
	return nil
}

// deleteRedisPrefix removes every key starting with prefix. The prefix is
// made of [a-z0-9:] only, so it needs no escaping inside a SCAN pattern.
func deleteRedisPrefix(ctx context.Context, addr, prefix string) error {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	iter := c.Scan(ctx, 0, prefix+"*", 500).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Unlink(ctx, batch...).Err()
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}
