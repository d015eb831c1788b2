/* A deliberate data race, for spec/tsan_spec.lua: under ThreadSanitizer this program must be
 * reported (exit code from TSAN_OPTIONS), so the suite proves its TSan pass detects races.
 * Built without TSan it just prints the counter and exits 0. */
#include <pthread.h>
#include <stdio.h>

static volatile long counter; /* written by two threads with no lock: the race */

static void *bump(void *arg) {
    (void)arg;
    for (int i = 0; i < 100000; i++) counter++;
    return NULL;
}

int main(void) {
    pthread_t a, b;
    pthread_create(&a, NULL, bump, NULL);
    pthread_create(&b, NULL, bump, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("%ld\n", counter);
    return 0;
}
