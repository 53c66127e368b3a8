// ssocl fleet aggregate and fleet keygen: the aggregator as a command (agent/fleet/aggregator.ts does the
// work), the fleet's keys, and what run --fleet takes from the command line.

import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { writeFileAtomic } from '../../core/atomic.ts';
import { Aggregator } from '../fleet/aggregator.ts';
import { parseRobust } from '../fleet/combine.ts';
import { ID_RE } from '../fleet/ids.ts';
import { AllowList, keygen, readPrivateKey, readPublicKey } from '../fleet/keys.ts';
import type { BrokerOptions } from '../fleet/transport.ts';
import { parseEvery } from '../pipeline/every.ts';
import type { FleetDeviceOptions } from '../fleet/device.ts';
import { UsageError } from '../cli-args.ts';

export function brokerOf(a: Record<string, any>, flag: 'fleet' | 'broker'): BrokerOptions {
  const p = flag === 'fleet' ? 'fleet-' : '';
  return { url: a[flag], username: a[`${p}username`], password: a[`${p}password`], ca: a[`${p}ca`], cert: a[`${p}cert`], key: a[`${p}key`], insecure: a[`${p}insecure`] };
}

/**
 * The device id: --fleet-device, else one made up on the first run and kept in <state>/fleet-device, so
 * a restarted device is the same device (its broker session and its place in the rounds).
 */
export function deviceId(a: Record<string, any>, stateDir: string): string {
  if (a['fleet-device'] !== undefined) {
    if (!ID_RE.test(a['fleet-device'])) throw new UsageError(`--fleet-device ${JSON.stringify(a['fleet-device'])}: use 1-64 letters, digits, '.', '_' or '-'`);
    return a['fleet-device'];
  }
  const file = path.join(stateDir, 'fleet-device');
  if (existsSync(file)) {
    const id = readFileSync(file, 'utf8').trim();
    if (ID_RE.test(id)) return id;
  }
  const id = `dev-${randomBytes(4).toString('hex')}`;
  mkdirSync(stateDir, { recursive: true });
  writeFileAtomic(file, `${id}\n`);
  return id;
}

const NO_KEYS = 'make keys with `ssocl fleet keygen --out DIR --name NAME` (README: a fleet of cameras), or give --insecure-fleet to run a fleet any client on the broker can steer';

/** The key flags of run --fleet, read before anything starts; a device without keys needs --insecure-fleet. */
export function fleetDeviceOptions(a: Record<string, any>, stateDir: string): FleetDeviceOptions | undefined {
  if (!a.fleet) return undefined;
  // Keys first: a refused command line creates nothing in --state.
  let keys: FleetDeviceOptions['keys'];
  if (a['fleet-identity'] === undefined) {
    if (a['fleet-aggregator-key'] !== undefined) throw new UsageError('--fleet-aggregator-key needs --fleet-identity (this device\'s private key)');
    if (!a['insecure-fleet']) throw new UsageError(`--fleet: this device has no --fleet-identity; ${NO_KEYS}`);
  } else {
    try {
      keys = {
        key: readPrivateKey('--fleet-identity', a['fleet-identity']),
        ...(a['fleet-aggregator-key'] !== undefined ? { aggregator: readPublicKey('--fleet-aggregator-key', a['fleet-aggregator-key']) } : {}),
        pin: path.join(stateDir, `fleet-aggregator-${a['fleet-name']}.pub`),
      };
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  return { broker: brokerOf(a, 'fleet'), fleet: a['fleet-name'], device: deviceId(a, stateDir), every: parseEvery('--fleet-every', a['fleet-every']), enc: a['fleet-encoding'], ...(keys ? { keys } : {}) };
}

export function fleetKeygenCommand(a: Record<string, any>): void {
  let r: ReturnType<typeof keygen>;
  try {
    r = keygen(a.out, a.name);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  process.stdout.write(`${r.key} (private: keep it on this machine, mode 0600)\n${r.pub} (public)\nfingerprint ${r.fingerprint}\n`);
}

export async function fleetAggregateCommand(a: Record<string, any>): Promise<void> {
  let robust;
  try {
    robust = parseRobust(a.robust);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const log = (line: string) => process.stderr.write(`${line}\n`);
  let keys;
  if (a.identity === undefined && a.allow === undefined) {
    if (!a['insecure-fleet']) throw new UsageError(`fleet aggregate: no --identity and --allow; ${NO_KEYS}`);
  } else {
    if (a.identity === undefined || a.allow === undefined) throw new UsageError(`fleet aggregate: --identity (the aggregator's private key) and --allow (a folder of DEVICE.pub keys) go together`);
    try {
      keys = { key: readPrivateKey('--identity', a.identity), allow: new AllowList(a.allow, log) };
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  const agg = await Aggregator.open({
    broker: brokerOf(a, 'broker'),
    fleet: a.fleet,
    artifacts: path.resolve(a.artifacts),
    models: a.models ? path.resolve(a.models) : undefined,
    expect: a.expect,
    roundTimeoutMs: a['round-timeout'] * 1000,
    minUpdates: a['min-updates'],
    robust,
    screen: { maxNormRatio: a['max-norm-ratio'], absMaxRatio: a['max-abs-ratio'], historyRatio: a['max-history-ratio'], weightCap: a['weight-cap'] },
    keys,
    state: a.state ? path.resolve(a.state) : undefined,
    maxHeld: a['max-held'],
    maxHeldBytes: a['max-held-mib'] * 2 ** 20,
    enc: a.encoding,
    maxRounds: a['max-rounds'],
    serverLr: a['server-lr'],
    log,
  });
  const stop = (sig: string) => () => {
    log(`${sig}: stopping (the global model and the devices' updates stay on the broker)`);
    agg.stop();
  };
  process.once('SIGINT', stop('SIGINT'));
  process.once('SIGTERM', stop('SIGTERM'));
  const rounds = await agg.run();
  process.stdout.write(`${rounds.length} round(s); global v${agg.version}, ${agg.frames} frames learnt in all\n`);
}
