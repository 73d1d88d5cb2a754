import CAgentSupport
import Testing

@Suite("Memory tuning")
struct MemoryTuningTests {
    /// The tuning once compiled to a no-op on glibc (its `#if` ran before any header defined `__GLIBC__`),
    /// and the daemon ran with a malloc arena per thread unnoticed.
    @Test func mallocTuningTakesEffectOnGlibc() {
        #if os(Linux)
            #expect(cagent_tune_malloc(1 << 20, 1) == 1)
        #endif
    }
}
