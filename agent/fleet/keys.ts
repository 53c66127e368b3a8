// Fleet identity (issue #30): Ed25519 keys from node:crypto. The aggregator signs every global model and
// each device signs its updates; a signature covers the message's whole header, the digest of its tensor
// bytes and the tensors' layout (codec.ts builds that text), so no field can be edited and no tensor
// swapped without the signer's private key. Keys are PEM files: NAME.key (PKCS#8, mode 0600) and
// NAME.pub (SPKI).

import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../../core/atomic.ts';
import { ID_RE } from './ids.ts';

/** What a message carries to be checked: the signed text, the signer's public key (SPKI DER, base64) and the signature (base64). */
export interface Auth {
  text: string;
  key?: string;
  signature?: string;
}

/** The signing side: the private key and its public half as carried in messages. */
export interface Signer {
  key: KeyObject;
  /** SPKI DER, base64. */
  pub: string;
}

export function signerOf(key: KeyObject): Signer {
  return { key, pub: createPublicKey(key).export({ type: 'spki', format: 'der' }).toString('base64') };
}

/** sha256 of the SPKI DER, first 16 hex digits: what logs and files name a key by. */
export function fingerprint(key: KeyObject | string): string {
  const der = typeof key === 'string' ? Buffer.from(key, 'base64') : key.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex').slice(0, 16);
}

export function signText(s: Signer, text: string): string {
  return sign(null, Buffer.from(text, 'utf8'), s.key).toString('base64');
}

/** True when `auth` is signed by `pub` (whatever key the message itself names). */
export function verifyAuth(auth: Auth, pub: KeyObject): boolean {
  if (!auth.signature) return false;
  try {
    return verify(null, Buffer.from(auth.text, 'utf8'), pub, Buffer.from(auth.signature, 'base64'));
  } catch {
    return false;
  }
}

/** The public key a message names, or null if it names none or a malformed one. */
export function keyOf(auth: Auth): KeyObject | null {
  if (!auth.key) return null;
  try {
    const k = createPublicKey({ key: Buffer.from(auth.key, 'base64'), format: 'der', type: 'spki' });
    return k.asymmetricKeyType === 'ed25519' ? k : null;
  } catch {
    return null;
  }
}

/** Writes DIR/NAME.key (0600) and DIR/NAME.pub; refuses to overwrite either. */
export function keygen(dir: string, name: string): { key: string; pub: string; fingerprint: string } {
  if (!ID_RE.test(name)) throw new Error(`--name ${JSON.stringify(name)}: use 1-64 letters, digits, '.', '_' or '-' (a device's key is named by its device id)`);
  const key = path.join(dir, `${name}.key`);
  const pub = path.join(dir, `${name}.pub`);
  for (const f of [key, pub]) if (existsSync(f)) throw new Error(`--out ${dir}: ${path.basename(f)} exists; keys are never overwritten (remove it, or give another --name)`);
  const pair = generateKeyPairSync('ed25519');
  writeFileAtomic(key, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  writeFileAtomic(pub, pair.publicKey.export({ type: 'spki', format: 'pem' }) as string);
  return { key, pub, fingerprint: fingerprint(pair.publicKey) };
}

/** An Ed25519 private key from a PEM file, or an Error naming the flag. */
export function readPrivateKey(flag: string, file: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPrivateKey(readFileSync(file));
  } catch (e) {
    throw new Error(`${flag} ${file}: not a readable private key (${(e as NodeJS.ErrnoException).code ?? oneLine(e)}); make one with ssocl fleet keygen`);
  }
  if (k.asymmetricKeyType !== 'ed25519') throw new Error(`${flag} ${file}: a ${k.asymmetricKeyType} key; fleet keys are Ed25519 (ssocl fleet keygen)`);
  return k;
}

/** An Ed25519 public key from a PEM file (a private key's file gives its public half), or an Error naming the flag. */
export function readPublicKey(flag: string, file: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPublicKey(readFileSync(file));
  } catch (e) {
    throw new Error(`${flag} ${file}: not a readable public key (${(e as NodeJS.ErrnoException).code ?? oneLine(e)}); it is the .pub file of ssocl fleet keygen`);
  }
  if (k.asymmetricKeyType !== 'ed25519') throw new Error(`${flag} ${file}: a ${k.asymmetricKeyType} key; fleet keys are Ed25519 (ssocl fleet keygen)`);
  return k;
}

/**
 * The aggregator's allow-list: a folder of public keys, DEVICE.pub for each device id allowed to send
 * updates (the key binds to that id). Read again when an unknown device speaks, at most every few
 * seconds, so a device is added by copying its .pub file there.
 */
export class AllowList {
  private keys = new Map<string, KeyObject>();
  private loadedAt = -Infinity;
  private stamp = '';

  constructor(
    readonly dir: string,
    private log: (line: string) => void,
    private refreshMs = 5000,
  ) {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`--allow ${dir}: not a directory (a folder of DEVICE.pub files, from ssocl fleet keygen --name DEVICE)`);
    this.load();
  }

  get size(): number {
    return this.keys.size;
  }

  /** The key allowed for `device`, or null. */
  get(device: string): KeyObject | null {
    if (!this.keys.has(device) && performance.now() - this.loadedAt >= this.refreshMs) this.load();
    return this.keys.get(device) ?? null;
  }

  private load(): void {
    this.loadedAt = performance.now();
    const keys = new Map<string, KeyObject>();
    const bad: string[] = [];
    let names: string[];
    try {
      names = readdirSync(this.dir).filter((n) => n.endsWith('.pub')).sort();
    } catch (e) {
      this.log(`fleet: --allow ${this.dir}: cannot list it (${(e as NodeJS.ErrnoException).code}); keeping the ${this.keys.size} key(s) read before`);
      return;
    }
    for (const n of names) {
      const id = n.slice(0, -4);
      if (!ID_RE.test(id)) continue;
      try {
        keys.set(id, readPublicKey('--allow', path.join(this.dir, n)));
      } catch {
        bad.push(n);
      }
    }
    const stamp = [...keys.keys()].join(',') + '|' + bad.join(',');
    if (stamp !== this.stamp) this.log(`fleet: allow-list ${this.dir}: ${keys.size} device key(s)${bad.length ? `; not Ed25519 public keys, skipped: ${bad.join(', ')}` : ''}`);
    this.stamp = stamp;
    this.keys = keys;
  }
}

function oneLine(e: unknown): string {
  return String((e as Error).message ?? e).split('\n')[0].slice(0, 120);
}
