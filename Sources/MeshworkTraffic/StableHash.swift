/// A hash that is the same in every process and on every run (Swift's `Hasher` is seeded
/// per process): FNV-1a 64 over the bytes, then the SplitMix64 finalizer so that keys
/// differing in one byte land far apart. Ring hash, Maglev and request hashing agree on it
/// across sidecars, which is what makes consistent hashing consistent mesh-wide.
public enum StableHash {
    public static func hash(_ text: some StringProtocol) -> UInt64 {
        hash(bytes: text.utf8)
    }

    public static func hash(bytes: some Sequence<UInt8>) -> UInt64 {
        var value: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in bytes { value = (value ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return mix(value)
    }

    /// The SplitMix64 output function: a bijective avalanche mix.
    public static func mix(_ input: UInt64) -> UInt64 {
        var z = input
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
