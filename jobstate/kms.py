"""A `jobstate.Cipher` backed by the AWS Encryption SDK: KMS in production, a local key in
tests (`pip install 'jobstate[kms]'`; `import jobstate` never needs it).

Each ciphertext is an Encryption SDK message (AES-256-GCM with key commitment, one
encrypted data key). What it is bound to:
- the table and the kind ("tokens", "effect-result") are its *encryption context*: KMS
  checks them on Decrypt, CloudTrail logs them, and an IAM condition can name the table
  (`kms:EncryptionContext:jobstate:table`, as template.yaml does);
- the job id is sealed inside the message, authenticated with it, and checked on
  decrypt: a ciphertext copied onto another job (or another table) does not decrypt.
  (The job id is kept out of the encryption context on purpose: the data-key cache is
  keyed by the context, so a per-job context would cost a KMS request per job.)

A data-key cache (per process: a warm Lambda container) reuses a data key for up to
`cache_max_age_s` seconds and `cache_max_messages` messages, so a container calls KMS
about once per window instead of on every step; docs/security.md has the cost model.
"""

from __future__ import annotations

import base64
import importlib
import os
from collections.abc import Mapping
from typing import Any

from . import extras
from .codec import Cipher
from .errors import InvalidInput

INSTALL = "pip install 'jobstate[kms]'"
KEY_ENV = "JOBSTATE_KMS_KEY_ARN"
FORMAT = "kms1:"  # this module's ciphertexts (after the store's own "enc:")
TABLE_KEY, KIND_KEY = "jobstate:table", "jobstate:kind"  # encryption context keys
CACHE_MAX_AGE_S = 300.0
CACHE_MAX_MESSAGES = 10_000
CACHE_CAPACITY = 64


def _sdk() -> Any:
    try:
        return importlib.import_module("aws_encryption_sdk")
    except ImportError as exc:
        raise extras.missing("kms", "the KMS cipher (jobstate.kms)", exc) from None


class EnvelopeCipher:
    """Encrypts with an Encryption SDK master key provider (see `kms_cipher`, `local_cipher`)."""

    def __init__(self, provider: Any, *, cache_max_age_s: float = CACHE_MAX_AGE_S,
                 cache_max_messages: int = CACHE_MAX_MESSAGES,
                 cache_capacity: int = CACHE_CAPACITY) -> None:
        sdk = _sdk()
        ids = importlib.import_module("aws_encryption_sdk.identifiers")
        self._algorithm = ids.Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
        self._client = sdk.EncryptionSDKClient(
            commitment_policy=ids.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
            max_encrypted_data_keys=1)
        if cache_max_age_s > 0:
            self._cmm = sdk.CachingCryptoMaterialsManager(
                master_key_provider=provider,
                cache=sdk.LocalCryptoMaterialsCache(capacity=cache_capacity),
                max_age=float(cache_max_age_s), max_messages_encrypted=cache_max_messages)
        else:
            self._cmm = sdk.DefaultCryptoMaterialsManager(master_key_provider=provider)

    def cipher(self) -> Cipher:
        return Cipher(self.encrypt, self.decrypt, context=True)

    def encrypt(self, text: str, context: Mapping[str, str]) -> str:
        sealed = context["job_id"].encode() + b"\0" + text.encode("utf-8")
        message, _ = self._client.encrypt(
            source=sealed, materials_manager=self._cmm, algorithm=self._algorithm,
            encryption_context=_encryption_context(context), frame_length=0)
        return FORMAT + base64.b64encode(message).decode("ascii")

    def decrypt(self, text: str, context: Mapping[str, str]) -> str:
        if not text.startswith(FORMAT):
            raise ValueError("not a ciphertext of jobstate.kms")
        plain, header = self._client.decrypt(source=base64.b64decode(text[len(FORMAT):]),
                                             materials_manager=self._cmm)
        for key, value in _encryption_context(context).items():
            if header.encryption_context.get(key) != value:
                raise ValueError(f"the ciphertext was written for another {key}")
        job_id, sep, body = bytes(plain).partition(b"\0")
        if not sep or job_id.decode() != context["job_id"]:
            raise ValueError("the ciphertext was written for another job")
        return body.decode("utf-8")


def _encryption_context(context: Mapping[str, str]) -> dict[str, str]:
    return {TABLE_KEY: context["table"], KIND_KEY: context["kind"]}


def kms_cipher(key_arn: str, *, botocore_session: Any = None,
               cache_max_age_s: float = CACHE_MAX_AGE_S,
               cache_max_messages: int = CACHE_MAX_MESSAGES) -> Cipher:
    """A Cipher whose data keys come from the KMS key `key_arn` (kms:GenerateDataKey on
    encrypt, kms:Decrypt on decrypt, both with the encryption context). With
    `cache_max_age_s=0` nothing is cached: one KMS request per encryption and decryption."""
    if not isinstance(key_arn, str) or not key_arn.startswith("arn:") or ":kms:" not in key_arn:
        raise InvalidInput(f"a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID) is needed, got "
                           f"{key_arn!r:.80}; set {KEY_ENV} to the stack's KmsKeyArn.")
    sdk = _sdk()
    kw: dict[str, Any] = {"key_ids": [key_arn]}
    if botocore_session is not None:
        kw["botocore_session"] = botocore_session
    provider = sdk.StrictAwsKmsMasterKeyProvider(**kw)
    return EnvelopeCipher(provider, cache_max_age_s=cache_max_age_s,
                          cache_max_messages=cache_max_messages).cipher()


def local_cipher(key: bytes, *, key_id: str = "local",
                 cache_max_age_s: float = CACHE_MAX_AGE_S) -> Cipher:
    """A Cipher with a raw AES-256 wrapping key held by the process (tests, the local
    runtime): the same messages as the KMS cipher, without KMS."""
    if not isinstance(key, bytes) or len(key) != 32:
        raise InvalidInput("local_cipher needs a 32-byte AES-256 key, e.g. os.urandom(32).")
    return EnvelopeCipher(_raw_provider(key, key_id), cache_max_age_s=cache_max_age_s).cipher()


def _raw_provider(key: bytes, key_id: str) -> Any:
    raw = importlib.import_module("aws_encryption_sdk.key_providers.raw")
    ids = importlib.import_module("aws_encryption_sdk.identifiers")
    crypto = importlib.import_module("aws_encryption_sdk.internal.crypto.wrapping_keys")
    base: Any = raw.RawMasterKeyProvider

    class Provider(base):  # type: ignore[misc]
        provider_id = "jobstate-local"

        def __init__(self, **_: Any) -> None:
            pass

        def _get_raw_key(self, wanted: bytes) -> Any:
            if wanted != key_id.encode():
                raise KeyError("unknown key id")
            return crypto.WrappingKey(
                wrapping_algorithm=ids.WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                wrapping_key=key, wrapping_key_type=ids.EncryptionKeyType.SYMMETRIC)

    provider = Provider()
    provider.add_master_key(key_id.encode())
    return provider


def cipher_from_env(environ: Mapping[str, str] = os.environ) -> Cipher | None:
    """The KMS cipher for `JOBSTATE_KMS_KEY_ARN`, or None when it is unset or empty."""
    arn = environ.get(KEY_ENV, "").strip()
    return kms_cipher(arn) if arn else None


__all__ = ["EnvelopeCipher", "cipher_from_env", "kms_cipher", "local_cipher"]
