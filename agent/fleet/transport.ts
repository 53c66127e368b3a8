// The broker connection shared by devices and the aggregator: MQTT 3.1.1 persistent sessions (clean
// false, a fixed client id) so QoS 1 messages published while a client is away wait for it at the
// broker, with TLS and username/password as MQTT.js and Mosquitto support them. Topics live under
// ssocl/fleet/<name>/: update/<device> (retained: each device's latest update, so an aggregator that
// restarts mid-round finds the round again), global (retained, float32: the current global model, for a
// device that joins or fell behind) and global-delta (its change from the previous version, compact).

import { readFileSync } from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { checkBrokerUrl } from './ids.ts';

export { checkBrokerUrl, checkId } from './ids.ts';

export interface BrokerOptions {
  /** mqtt://HOST:PORT, mqtts://HOST:PORT (TLS), ws:// or wss://. */
  url: string;
  username?: string;
  password?: string;
  /** PEM files: a CA to trust (a private broker's), and a client certificate and key (mutual TLS). */
  ca?: string;
  cert?: string;
  key?: string;
  /** TLS without checking the broker's certificate (testing only). */
  insecure?: boolean;
}

export const topics = (fleet: string) => {
  const root = `ssocl/fleet/${fleet}`;
  return { root, update: (device: string) => `${root}/update/${device}`, updates: `${root}/update/+`, global: `${root}/global`, delta: `${root}/global-delta` };
};

/**
 * A client that keeps reconnecting in the background: training never waits for the broker. The
 * password may come from SSOCL_FLEET_PASSWORD instead of the command line (visible in ps).
 */
export function connect(o: BrokerOptions, clientId: string, log: (line: string) => void): MqttClient {
  checkBrokerUrl('--fleet', o.url);
  const read = (flag: string, f?: string) => {
    if (!f) return undefined;
    try {
      return readFileSync(f);
    } catch (e) {
      throw new Error(`${flag} ${f}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  };
  const opts: IClientOptions = {
    clientId,
    clean: false,
    protocolVersion: 4,
    reconnectPeriod: 1000,
    connectTimeout: 10_000,
    keepalive: 30,
    // A stale update is worth nothing: QoS 1 messages are not queued in memory while disconnected
    // (the callers check `connected` and try again next round).
    queueQoSZero: false,
    ...(o.username ? { username: o.username } : {}),
    ...(o.password ?? process.env.SSOCL_FLEET_PASSWORD ? { password: o.password ?? process.env.SSOCL_FLEET_PASSWORD } : {}),
    ...(o.ca ? { ca: read('--fleet-ca', o.ca) } : {}),
    ...(o.cert ? { cert: read('--fleet-cert', o.cert) } : {}),
    ...(o.key ? { key: read('--fleet-key', o.key) } : {}),
    ...(o.insecure ? { rejectUnauthorized: false } : {}),
  };
  const c = mqtt.connect(o.url, opts);
  let up = false;
  let lastErr = '';
  c.on('connect', () => {
    up = true;
    lastErr = '';
    log(`fleet: connected to ${redact(o.url)} as ${clientId}`);
  });
  c.on('close', () => {
    // Not when this process ends the connection itself.
    if (up && !c.disconnecting) log(`fleet: lost ${redact(o.url)}; reconnecting in the background, training goes on`);
    up = false;
  });
  c.on('error', (e) => {
    // Reported once per kind, not every reconnect attempt.
    if (e.message !== lastErr) log(`fleet: ${redact(o.url)}: ${e.message}`);
    lastErr = e.message;
  });
  return c;
}

/** The URL without credentials, for logs. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return url;
  }
}

/** Waits until the client is connected, or `ms` passes (false). */
export function connected(c: MqttClient, ms: number): Promise<boolean> {
  if (c.connected) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      c.off('connect', on);
      resolve(false);
    }, ms);
    const on = () => {
      clearTimeout(t);
      resolve(true);
    };
    c.once('connect', on);
  });
}
