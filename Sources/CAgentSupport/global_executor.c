#define _GNU_SOURCE
#include "CAgentSupport.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/*
 * Swift concurrency's global executor, on threads of our own.
 *
 * On Linux the runtime runs tasks on libdispatch's global queues, and the first worker thread of such a
 * queue starts libdispatch's pool monitor: a timer on its manager thread that fires every second for the
 * rest of the process (swift-corelibs-libdispatch, src/event/workqueue.c), so an idle daemon never sleeps
 * longer than a second. The runtime asks hook variables before it enqueues a job on the global executor;
 * with these set, every such job runs here instead, and no libdispatch worker thread (nor its monitor) is
 * ever started. (The main actor's jobs still go to the main queue, which libdispatch does not monitor.)
 *
 * A fixed pool. Idle threads wait for a job; at most one of them (the timer thread) waits with a timeout, for
 * the earliest delayed job (`Task.sleep`), so a sleep that ends wakes one thread, not the pool, and an idle
 * pool without sleeps never wakes. Jobs run in the order they came; delayed jobs when due.
 */

/* The runtime's types, as its headers declare them (swift/ABI/Executor.h, swift/Runtime/Concurrency.h). */
typedef struct SwiftJob SwiftJob;
typedef struct {
    void *identity;
    uintptr_t implementation;
} SwiftSerialExecutorRef;

#define SWIFT_CC __attribute__((swiftcall))

typedef SWIFT_CC void (*enqueue_global_original)(SwiftJob *job);
typedef SWIFT_CC void (*enqueue_global_with_delay_original)(unsigned long long delay, SwiftJob *job);
typedef SWIFT_CC void (*enqueue_global_with_deadline_original)(long long sec, long long nsec, long long tsec,
                                                                long long tnsec, int clock, SwiftJob *job);

extern SWIFT_CC void (*swift_task_enqueueGlobal_hook)(SwiftJob *job, enqueue_global_original original);
extern SWIFT_CC void (*swift_task_enqueueGlobalWithDelay_hook)(unsigned long long delay, SwiftJob *job,
                                                               enqueue_global_with_delay_original original);
extern SWIFT_CC void (*swift_task_enqueueGlobalWithDeadline_hook)(long long sec, long long nsec, long long tsec,
                                                                  long long tnsec, int clock, SwiftJob *job,
                                                                  enqueue_global_with_deadline_original original);
extern SWIFT_CC void swift_job_run(SwiftJob *job, SwiftSerialExecutorRef executor);
extern SWIFT_CC void swift_get_time(long long *seconds, long long *nanoseconds, int clock);

struct pending_job {
    SwiftJob *job;
    uint64_t due; /* CLOCK_MONOTONIC nanoseconds; 0 for a job that may run now */
    struct pending_job *next;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
/* Idle threads wait here for a job (`idle_waiters` of them); the timer thread on `timer_wake`. */
static pthread_cond_t pool_wake, timer_wake;
static int idle_waiters;
static int timer_waiting;
/* Jobs that may run now, first in first out. */
static struct pending_job *ready_head, *ready_tail;
/* Delayed jobs, earliest first. */
static struct pending_job *delayed;

static uint64_t monotonic_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

static struct pending_job *new_pending(SwiftJob *job, uint64_t due) {
    struct pending_job *pending = malloc(sizeof *pending);
    if (pending == NULL) {
        fputs("fatal: out of memory queueing a task\n", stderr);
        abort();
    }
    pending->job = job;
    pending->due = due;
    pending->next = NULL;
    return pending;
}

/* With the lock held: a thread for a job that may run now, the timer thread when no other is idle. */
static void wake_one_for_work(void) {
    if (idle_waiters > 0) pthread_cond_signal(&pool_wake);
    else if (timer_waiting) pthread_cond_signal(&timer_wake);
}

static SWIFT_CC void enqueue_global(SwiftJob *job, enqueue_global_original original) {
    (void)original;
    struct pending_job *pending = new_pending(job, 0);
    pthread_mutex_lock(&pool_lock);
    if (ready_tail) ready_tail->next = pending;
    else ready_head = pending;
    ready_tail = pending;
    wake_one_for_work();
    pthread_mutex_unlock(&pool_lock);
}

static void enqueue_at(SwiftJob *job, uint64_t due) {
    struct pending_job *pending = new_pending(job, due ? due : 1);
    pthread_mutex_lock(&pool_lock);
    struct pending_job **slot = &delayed;
    while (*slot && (*slot)->due <= pending->due) slot = &(*slot)->next;
    pending->next = *slot;
    *slot = pending;
    /* A new earliest deadline: the timer thread must wait less long, or an idle thread become it. */
    if (delayed == pending) {
        if (timer_waiting) pthread_cond_signal(&timer_wake);
        else if (idle_waiters > 0) pthread_cond_signal(&pool_wake);
    }
    pthread_mutex_unlock(&pool_lock);
}

static SWIFT_CC void enqueue_global_with_delay(unsigned long long delay, SwiftJob *job,
                                               enqueue_global_with_delay_original original) {
    (void)original;
    enqueue_at(job, monotonic_now() + delay);
}

static SWIFT_CC void enqueue_global_with_deadline(long long sec, long long nsec, long long tsec, long long tnsec,
                                                  int clock, SwiftJob *job,
                                                  enqueue_global_with_deadline_original original) {
    (void)tsec;
    (void)tnsec;
    (void)original;
    /* The deadline is on the task's clock (continuous or suspending); what is left of it is the same on ours. */
    long long now_sec, now_nsec;
    swift_get_time(&now_sec, &now_nsec, clock);
    long long left = (sec - now_sec) * 1000000000LL + (nsec - now_nsec);
    enqueue_at(job, monotonic_now() + (left > 0 ? (uint64_t)left : 0));
}

static void *pool_thread(void *context) {
    char name[16];
    snprintf(name, sizeof name, "async-%d", (int)(intptr_t)context);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        uint64_t now = delayed ? monotonic_now() : 0;
        while (delayed && delayed->due <= now) {
            struct pending_job *due = delayed;
            delayed = due->next;
            due->next = NULL;
            if (ready_tail) ready_tail->next = due;
            else ready_head = due;
            ready_tail = due;
        }
        if (ready_head) {
            struct pending_job *next = ready_head;
            ready_head = next->next;
            if (ready_head == NULL) ready_tail = NULL;
            /* More work, or a deadline nobody watches: let another thread see to it. */
            if (ready_head) wake_one_for_work();
            else if (delayed && !timer_waiting && idle_waiters > 0) pthread_cond_signal(&pool_wake);
            pthread_mutex_unlock(&pool_lock);
            SwiftJob *job = next->job;
            free(next);
            swift_job_run(job, (SwiftSerialExecutorRef){NULL, 0});
            pthread_mutex_lock(&pool_lock);
            continue;
        }
        if (delayed && !timer_waiting) {
            struct timespec until = {(time_t)(delayed->due / 1000000000u), (long)(delayed->due % 1000000000u)};
            timer_waiting = 1;
            pthread_cond_timedwait(&timer_wake, &pool_lock, &until);
            timer_waiting = 0;
        } else {
            idle_waiters++;
            pthread_cond_wait(&pool_wake, &pool_lock);
            idle_waiters--;
        }
    }
    return NULL;
}

int cagent_install_global_executor(int threads) {
    if (swift_task_enqueueGlobal_hook || swift_task_enqueueGlobalWithDelay_hook ||
        swift_task_enqueueGlobalWithDeadline_hook)
        return 0;
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&pool_wake, &attributes);
    pthread_cond_init(&timer_wake, &attributes);
    pthread_condattr_destroy(&attributes);
    int started = 0;
    for (int index = 0; index < threads; index++) {
        pthread_t thread;
        pthread_attr_t thread_attributes;
        pthread_attr_init(&thread_attributes);
        pthread_attr_setdetachstate(&thread_attributes, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&thread, &thread_attributes, pool_thread, (void *)(intptr_t)index) == 0) started++;
        pthread_attr_destroy(&thread_attributes);
    }
    if (started == 0) return 0;
    swift_task_enqueueGlobal_hook = enqueue_global;
    swift_task_enqueueGlobalWithDelay_hook = enqueue_global_with_delay;
    swift_task_enqueueGlobalWithDeadline_hook = enqueue_global_with_deadline;
    return started;
}
