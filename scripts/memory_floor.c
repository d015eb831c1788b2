/* The floor under an idle tarry worker's memory: a program that links only libpq (and libc),
   optionally connects with conninfo argv[1] and LISTENs, then waits to be measured. Built and run
   by scripts/memory_report --floor. "-" as argv[1]: load libpq, connect nowhere. */
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "-") != 0) {
        PGconn *conn = PQconnectdb(argv[1]);
        if (PQstatus(conn) != CONNECTION_OK) {
            fprintf(stderr, "memory_floor: %s", PQerrorMessage(conn));
            return 1;
        }
        PQclear(PQexec(conn, "LISTEN memory_floor"));
    } else {
        printf("libpq %d\n", PQlibVersion());
    }
    printf("ready\n");
    fflush(stdout);
    pause();
    return 0;
}
