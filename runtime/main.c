#include <stdio.h>
int main(void) { puts("tarry"); return 0; }
